// Time to ready of `keen serve` on embedded defaults, as an operator sees it: from spawning the
// server process to the first `GET /readyz` 200. Each round starts one process on a new data dir
// (PGlite's initdb, every migration) and, after a graceful stop, one on that existing data dir.
// Prints every round and the medians beside the targets (≤6 s first start, ≤2 s existing), the
// server's CPU time to ready (Linux), and the load average, since a shared machine's load moves
// the wall times most.
// Run: npx tsx bench/server-ready.ts [--rounds 3] [--built] [--against <checkout>]
// By default the process runs the TypeScript sources through tsx (as the tests do), so its
// module loading includes transpiling. `--built` starts the built command instead,
// `node packages/cli/bin/keen.js serve` (build first: npm run build -w @keen/cli and its deps).
// `--against` times another built checkout (say, main's) the same way, alternating with this one
// in every round, and prints both sides' medians and their ratio.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: { rounds: { type: "string", default: "3" }, built: { type: "boolean", default: false }, against: { type: "string" } },
});
const rounds = Math.max(1, Number(values.rounds));
const built = values.built === true || values.against !== undefined;
const sides = [{ name: "this checkout", root: process.cwd() }, ...(values.against ? [{ name: "against", root: resolve(values.against) }] : [])];

function start(dataDir: string, root: string): { child: ChildProcess; url: Promise<string> } {
  const args = built ? ["packages/cli/bin/keen.js", "serve"] : ["--import", "tsx", "packages/server/src/testing/serve-process.ts"];
  const child = spawn(process.execPath, args, {
    cwd: root,
    env: { PATH: process.env.PATH, KEEN_DATA_DIR: dataDir, PORT: "0", LOG_LEVEL: "silent", ANTHROPIC_API_KEY: "bench" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const url = new Promise<string>((resolve, reject) => {
    let text = "";
    const read = (chunk: unknown) => {
      text += String(chunk);
      // serve-process prints `ready <url>`; `keen serve` prints `listening on <url>`.
      const match = /(?:ready|listening on) (http:\/\/\S+)/.exec(text);
      if (match) resolve(match[1]!);
    };
    child.stdout!.on("data", read);
    child.stderr!.on("data", read);
    child.once("exit", (code) => reject(new Error(`server exited with ${code} before it was ready`)));
  });
  return { child, url };
}

/** CPU time (user + system) a process has used so far, from /proc; undefined where there is none. */
async function cpuMs(pid: number): Promise<number | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => undefined);
  if (!stat) return undefined;
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // clock ticks (USER_HZ 100) → ms
}

/**
 * Spawn → first 200 from /readyz (polled every 10 ms once the port is known), and the CPU time the
 * server process had used by then: on a shared machine the wall time follows the load, the CPU
 * time much less.
 */
async function timeToReady(dataDir: string, root: string): Promise<{ ms: number; cpu: number | undefined }> {
  const started = performance.now();
  const { child, url } = start(dataDir, root);
  try {
    const base = await url;
    for (;;) {
      const res = await fetch(`${base}/readyz`).catch(() => undefined);
      if (res?.status === 200) return { ms: performance.now() - started, cpu: await cpuMs(child.pid!) };
      await new Promise((r) => setTimeout(r, 10));
    }
  } finally {
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    await exited;
  }
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
interface Times {
  first: number[];
  existing: number[];
  firstCpu: number[];
  existingCpu: number[];
}
const times = new Map<string, Times>(sides.map((side) => [side.name, { first: [], existing: [], firstCpu: [], existingCpu: [] }]));
const cpuText = (cpu: number | undefined) => (cpu === undefined ? "" : ` (cpu ${cpu.toFixed(0)} ms)`);
console.log(`${built ? "built keen serve" : "sources through tsx"}; load average before: ${loadavg().map((l) => l.toFixed(2)).join(" ")} (${rounds} rounds)`);
for (let round = 1; round <= rounds; round++) {
  // Alternate which side goes first, so neither always meets the same moment of the load.
  for (const side of round % 2 === 1 ? sides : [...sides].reverse()) {
    const t = times.get(side.name)!;
    const dataDir = await mkdtemp(join(tmpdir(), "keen-bench-ready-"));
    try {
      const fresh = await timeToReady(dataDir, side.root);
      const again = await timeToReady(dataDir, side.root);
      t.first.push(fresh.ms);
      t.existing.push(again.ms);
      if (fresh.cpu !== undefined) t.firstCpu.push(fresh.cpu);
      if (again.cpu !== undefined) t.existingCpu.push(again.cpu);
      const label = sides.length > 1 ? ` ${side.name}` : "";
      console.log(`round ${round}${label}: new data dir ${fresh.ms.toFixed(0)} ms${cpuText(fresh.cpu)}, existing ${again.ms.toFixed(0)} ms${cpuText(again.cpu)}`);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  }
}
for (const side of sides) {
  const t = times.get(side.name)!;
  const label = sides.length > 1 ? ` (${side.name}, ${side.root})` : "";
  console.log(`median time to ready${label}: new data dir ${median(t.first).toFixed(0)} ms (target ≤ 6000), existing ${median(t.existing).toFixed(0)} ms (target ≤ 2000)`);
  if (t.existingCpu.length > 0) console.log(`median server CPU time to ready${label}: new data dir ${median(t.firstCpu).toFixed(0)} ms, existing ${median(t.existingCpu).toFixed(0)} ms`);
}
if (sides.length > 1) {
  const [ours, theirs] = sides.map((side) => times.get(side.name)!) as [Times, Times];
  const ratio = (a: number[], b: number[]) => (b.length > 0 && a.length > 0 ? (median(a) / median(b)).toFixed(2) : "n/a");
  console.log(
    `this checkout / against: wall new ${ratio(ours.first, theirs.first)}, wall existing ${ratio(ours.existing, theirs.existing)}, ` +
      `cpu new ${ratio(ours.firstCpu, theirs.firstCpu)}, cpu existing ${ratio(ours.existingCpu, theirs.existingCpu)}`,
  );
}
// Where an existing data dir's start goes, inside this (already loaded) process: opening PGlite,
// checking migrations, and the rest of createServer.
{
  const { openDatabase } = await import("@keen/gateway-kit");
  const { migrateServer } = await import("../packages/server/src/db/migrations.js");
  const { createServer } = await import("../packages/server/src/server.js");
  const dataDir = await mkdtemp(join(tmpdir(), "keen-bench-phases-"));
  try {
    await (await createServer({ port: 0, dataDir, logLevel: "silent" })).close();
    let t = performance.now();
    const database = await openDatabase({ dataDir: join(dataDir, "db") });
    const openMs = performance.now() - t;
    t = performance.now();
    await migrateServer(database.db);
    const migrateMs = performance.now() - t;
    await database.close();
    t = performance.now();
    const server = await createServer({ port: 0, dataDir, logLevel: "silent" });
    const createMs = performance.now() - t;
    await server.close();
    console.log(`existing data dir, in process: open PGlite ${openMs.toFixed(0)} ms, migrations check ${migrateMs.toFixed(0)} ms, whole createServer ${createMs.toFixed(0)} ms`);
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
}
console.log(`load average after: ${loadavg().map((l) => l.toFixed(2)).join(" ")}`);
