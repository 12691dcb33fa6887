// Preloaded with `node --import` by the benches: on exit, writes this process's peak RSS (KiB)
// and CPU time (user + system, ms) as JSON to the file named by KEEN_BENCH_RSS_FILE, so a bench
// can read them for a child process. CPU time moves far less than wall time on a busy machine.
import { writeFileSync } from "node:fs";

const file = process.env.KEEN_BENCH_RSS_FILE;
if (file) {
  process.on("exit", () => {
    const usage = process.resourceUsage();
    writeFileSync(file, JSON.stringify({ maxRssKiB: usage.maxRSS, cpuMs: (usage.userCPUTime + usage.systemCPUTime) / 1000 }));
  });
}
