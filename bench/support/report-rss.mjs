// Preloaded with `node --import` by the benches: on exit, writes this process's peak RSS (KiB)
// to the file named by KEEN_BENCH_RSS_FILE, so a bench can read the peak of a child process.
import { writeFileSync } from "node:fs";

const file = process.env.KEEN_BENCH_RSS_FILE;
if (file) process.on("exit", () => writeFileSync(file, String(process.resourceUsage().maxRSS)));
