/**
 * `keen run` end to end, as a user starts it, beside a bare `@anthropic-ai/sdk` streaming loop
 * doing the same scripted task (list files, write a file, run a command, finish) against the
 * same kind of offline Messages API server (zero model latency, prompt-cache simulation).
 *
 * Each round starts both as fresh processes, alternating, and reports per side:
 * - wall time from spawn to exit;
 * - fixed start cost: spawn until the server receives the first request;
 * - loop time: first request until exit, and keen's cost per turn beyond the bare loop's;
 * - peak RSS and CPU time of the process (read by bench/support/report-rss.mjs; git and
 *   commands it starts are not counted);
 * - cached share of input over requests 2..n, and the uncached input tokens there.
 *
 * keen's lifecycle needs one more request than the bare loop (the explore phase ends with
 * `finish_explore`), so keen's per-turn cost is spread over the bare loop's four turns.
 *
 *   npm run build -w @keen/agent-core -w @keen/cli && npx tsx bench/run-e2e.ts [--rounds 7] [--files 50]
 *
 * `--bin PATH` measures another build of the `keen` bin (e.g. a copy made before a change);
 * `--baseline PATH` adds a second build of it as a third side, in the same alternating rounds,
 * with its per-turn cost beside keen's (for a before/after comparison under one load).
 *
 * After the timed rounds, one more untimed round of each keen build runs with a `git` wrapper
 * first on PATH that logs each call, and the git processes keen started are printed: before the
 * first model request, between the first and the last, and after the last (processes git starts
 * itself are not counted).
 */
import { execFileSync, spawn } from "node:child_process";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { done, explore, scenarioPolicy, write } from "../packages/agent-core/src/lifecycle/testing/scenario.js";
import { reply, startMessagesServer, type MessagesServer, type ReplyPolicy } from "../packages/agent-core/src/testing/index.js";
import { createTestRepo } from "../packages/agent-core/src/workspace/test-repo.js";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "7" },
    files: { type: "string", default: "50" },
    bin: { type: "string", default: "packages/cli/bin/keen.js" },
    baseline: { type: "string" },
  },
});
const rounds = Math.max(5, Number(values.rounds));
const fileCount = Number(values.files);
const keenBin = resolve(values.bin);
const baselineBin = values.baseline ? resolve(values.baseline) : undefined;
const bareLoop = resolve("bench/support/bare-loop.mjs");
const rssPreload = resolve("bench/support/report-rss.mjs");
for (const built of ["packages/cli/bundle/main.js", "packages/agent-core/dist/index.js"]) {
  if (!existsSync(built)) throw new Error(`${built} is missing: run \`npm run build -w @keen/agent-core -w @keen/cli\` first`);
}

const TASK = "Write notes/hello.md saying hello, then show it with cat.";
const NOTE = "# Hello\n\nWritten by the scripted task.\n";
const BARE_TURNS = 4;

/** keen: explore (list files, finish_explore) then complete (write, run, complete_task). */
const keenPolicy = (): ReplyPolicy =>
  scenarioPolicy({
    root: {
      finish_explore: [reply.toolUse("list_files", {}), explore("COMPLETE")],
      complete_task: [write("notes/hello.md", NOTE), reply.toolUse("run_command", { command: "cat notes/hello.md" }), done("Wrote and showed the note.")],
    },
  });

/** The bare loop: one tool per turn. */
const barePolicy = (): ReplyPolicy => {
  const script = [
    reply.toolUse("list_files", {}),
    reply.toolUse("write_file", { path: "notes/hello.md", content: NOTE }),
    reply.toolUse("run_command", { command: "cat notes/hello.md" }),
    reply.toolUse("finish", { summary: "Wrote and showed the note." }),
  ];
  return (_request, { index }) => script[index] ?? reply.text("done");
};

interface Round {
  wall: number;
  start: number;
  loop: number;
  requests: number;
  rssMiB: number;
  cpuMs: number;
  cachedShare: number;
  uncached: number;
}

function sampleFiles(count: number): Record<string, string> {
  const files: Record<string, string> = { "README.md": "# sample\n" };
  for (let i = 0; i < count; i++) files[`src/part-${i}.ts`] = `export const part${i} = ${i};\n`;
  return files;
}

/** The model requests, without `keen run`'s endpoint check (one `count_tokens` before the run starts). */
const modelRequests = (server: MessagesServer) => server.requests.filter((request) => request.path === "/v1/messages");

function cacheFigures(server: MessagesServer): { cachedShare: number; uncached: number } {
  let cached = 0;
  let total = 0;
  let uncached = 0;
  for (const request of modelRequests(server).slice(1)) {
    const usage = request.usage;
    if (!usage) continue;
    cached += usage.cache_read_input_tokens;
    uncached += usage.input_tokens + usage.cache_creation_input_tokens;
    total += usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens;
  }
  return { cachedShare: total ? cached / total : 0, uncached };
}

/** The git calls of one run, by when they started against its model requests. */
interface GitCount {
  before: number;
  during: number;
  after: number;
  calls: string[];
}

async function oneRound(side: "keen" | "bare", bin = keenBin, gitLog?: { dir: string; file: string }): Promise<Round & { requestTimes: number[] }> {
  const server = await startMessagesServer({ policy: side === "keen" ? keenPolicy() : barePolicy() });
  const repo = await createTestRepo(sampleFiles(fileCount));
  const scratch = await mkdtemp(join(tmpdir(), "keen-bench-"));
  const rssFile = join(scratch, "rss");
  const args =
    side === "keen"
      ? [bin, "run", TASK, "--repo", repo, "--no-sandbox", "--json", "--max-depth", "0"]
      : [bareLoop, repo, TASK];
  const env = {
    ...process.env,
    ANTHROPIC_API_KEY: "bench",
    ANTHROPIC_BASE_URL: server.url,
    KEEN_BENCH_RSS_FILE: rssFile,
    KEEN_FORCE_TTY: "0",
    ...(gitLog ? { PATH: `${gitLog.dir}:${process.env.PATH ?? ""}`, KEEN_BENCH_GIT_LOG: gitLog.file } : {}),
  };
  const startedAt = server.clock(); // the clock of the server's receivedAt
  const started = performance.now();
  const child = spawn(process.execPath, ["--import", rssPreload, ...args], { env, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (chunk) => (stderr += chunk));
  const code = await new Promise<number | null>((settle) => child.on("exit", settle));
  const wall = performance.now() - started;
  await server.close();
  const expected = side === "keen" ? BARE_TURNS + 1 : BARE_TURNS;
  if (code !== 0 || modelRequests(server).length !== expected) {
    throw new Error(`${side} round failed: exit ${code}, ${modelRequests(server).length} requests (expected ${expected})\n${stderr}`);
  }
  const note = await readFile(join(repo, "notes/hello.md"), "utf8").catch(() => "");
  if (side === "bare" && note !== NOTE) throw new Error("the bare loop did not write the note");
  // Up to the first model request; keen's endpoint check before it counts as start cost.
  const start = modelRequests(server)[0]!.receivedAt - startedAt;
  const { maxRssKiB, cpuMs } = JSON.parse(await readFile(rssFile, "utf8")) as { maxRssKiB: number; cpuMs: number };
  const rssMiB = maxRssKiB / 1024;
  await rm(scratch, { recursive: true, force: true });
  await rm(repo, { recursive: true, force: true });
  const requestTimes = modelRequests(server).map((request) => request.receivedAt);
  return { wall, start, loop: wall - start, requests: modelRequests(server).length, rssMiB, cpuMs, ...cacheFigures(server), requestTimes };
}

/** One untimed run of `bin` with a git wrapper first on PATH; its git calls, split by the model requests. */
async function countGit(bin: string): Promise<GitCount> {
  const dir = await mkdtemp(join(tmpdir(), "keen-bench-git-"));
  const file = join(dir, "calls.log");
  const realGit = execFileSync("sh", ["-c", "command -v git"], { encoding: "utf8" }).trim();
  await writeFile(join(dir, "git"), `#!/bin/sh\nprintf '%s %s\\n' "$(date +%s%3N)" "$*" >> "$KEEN_BENCH_GIT_LOG"\nexec ${realGit} "$@"\n`);
  await chmod(join(dir, "git"), 0o755);
  try {
    const round = await oneRound("keen", bin, { dir, file });
    const first = round.requestTimes[0]!;
    const last = round.requestTimes.at(-1)!;
    const calls = (await readFile(file, "utf8")).trim().split("\n").filter(Boolean);
    const at = (line: string) => Number(line.slice(0, line.indexOf(" ")));
    return {
      before: calls.filter((line) => at(line) < first).length,
      during: calls.filter((line) => at(line) >= first && at(line) < last).length,
      after: calls.filter((line) => at(line) >= last).length,
      calls: calls.map((line) => line.slice(line.indexOf(" ") + 1)),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const pick = (rs: Round[], key: keyof Round) => median(rs.map((r) => r[key]));

await oneRound("keen"); // warm-up: file system caches
if (baselineBin) await oneRound("keen", baselineBin);
await oneRound("bare");
const keen: Round[] = [];
const baseline: Round[] = [];
const bare: Round[] = [];
for (let i = 0; i < rounds; i++) {
  keen.push(await oneRound("keen"));
  if (baselineBin) baseline.push(await oneRound("keen", baselineBin));
  bare.push(await oneRound("bare"));
}

const row = (label: string, k: string, b: string, ratio: string) => console.log(`  ${label.padEnd(40)}${k.padStart(12)}${b.padStart(12)}${ratio.padStart(12)}`);
const ms = (x: number) => `${x.toFixed(0)} ms`;
/** A difference with its sign: `+18 ms`, `−3.7 ms`. */
const signed = (ms: number, digits: number) => `${ms < 0 ? "−" : "+"}${Math.abs(ms).toFixed(digits)} ms`;
console.log(`keen run, scripted task (${BARE_TURNS} turns; keen sends ${keen[0]!.requests} requests), ${fileCount + 1}-file repository, median of ${rounds} rounds after a warm-up, Node ${process.version}`);
row("", "keen run", "bare SDK", "keen/bare");
row("wall time, spawn → exit", ms(pick(keen, "wall")), ms(pick(bare, "wall")), `${(pick(keen, "wall") / pick(bare, "wall")).toFixed(2)}×`);
row("fixed start cost, spawn → first request", ms(pick(keen, "start")), ms(pick(bare, "start")), signed(pick(keen, "start") - pick(bare, "start"), 0));
row("loop, first request → exit", ms(pick(keen, "loop")), ms(pick(bare, "loop")), `${(pick(keen, "loop") / pick(bare, "loop")).toFixed(2)}×`);
row(
  `per turn (loop ÷ ${BARE_TURNS})`,
  `${(pick(keen, "loop") / BARE_TURNS).toFixed(1)} ms`,
  `${(pick(bare, "loop") / BARE_TURNS).toFixed(1)} ms`,
  signed((pick(keen, "loop") - pick(bare, "loop")) / BARE_TURNS, 1),
);
row("CPU time of the process (user + system)", ms(pick(keen, "cpuMs")), ms(pick(bare, "cpuMs")), `${(pick(keen, "cpuMs") / pick(bare, "cpuMs")).toFixed(2)}×`);
row("peak RSS", `${pick(keen, "rssMiB").toFixed(0)} MiB`, `${pick(bare, "rssMiB").toFixed(0)} MiB`, `${(pick(keen, "rssMiB") / pick(bare, "rssMiB")).toFixed(2)}×`);
row("cached share of input, requests 2..n", pick(keen, "cachedShare").toFixed(2), pick(bare, "cachedShare").toFixed(2), "");
row("uncached input tokens, requests 2..n", pick(keen, "uncached").toFixed(0), pick(bare, "uncached").toFixed(0), "");
console.log("  targets: wall ≤ 1.30×, start ≤ +80 ms, per turn ≤ +5 ms");
const gitRow = (label: string, count: GitCount) =>
  console.log(`  git processes, ${label}: ${count.before + count.during + count.after} (${count.before} before the first request, ${count.during} until the last, ${count.after} after it)`);
const keenGit = await countGit(keenBin);
gitRow("keen run", keenGit);
if (process.env.KEEN_BENCH_GIT_CALLS) console.log(keenGit.calls.map((call) => `    git ${call}`).join("\n"));
if (baselineBin) {
  const baselineGit = await countGit(baselineBin);
  gitRow("baseline", baselineGit);
  if (process.env.KEEN_BENCH_GIT_CALLS) console.log(baselineGit.calls.map((call) => `    git ${call}`).join("\n"));
}
if (baselineBin) {
  const perTurn = (rs: Round[]) => (pick(rs, "loop") - pick(bare, "loop")) / BARE_TURNS;
  console.log(`  baseline ${values.baseline}: loop ${ms(pick(baseline, "loop"))} (${(pick(baseline, "loop") / pick(bare, "loop")).toFixed(2)}× the bare loop), per turn ${signed(perTurn(baseline), 1)}; keen above: ${signed(perTurn(keen), 1)}`);
  const start = (rs: Round[]) => pick(rs, "start") - pick(bare, "start");
  console.log(
    `  baseline: start ${signed(start(baseline), 0)} above the bare loop (keen above: ${signed(start(keen), 0)}), wall ${ms(pick(baseline, "wall"))} (keen above: ${ms(pick(keen, "wall"))}), CPU ${ms(pick(baseline, "cpuMs"))} (keen above: ${ms(pick(keen, "cpuMs"))})`,
  );
}
