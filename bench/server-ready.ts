// Time to ready of `keen serve` on embedded defaults, as an operator sees it: from spawning the
// server process to the first `GET /readyz` 200. Each round starts one process on a new data dir
// (PGlite's initdb, every migration) and, after a graceful stop, one on that existing data dir.
// Prints every round and the medians beside the targets (≤6 s first start, ≤2 s existing), and
// the load average, since a shared machine's load moves these numbers most.
// Run: npx tsx bench/server-ready.ts [--rounds 3] [--built]
// By default the process runs the TypeScript sources through tsx (as the tests do), so its
// module loading includes transpiling. `--built` starts the built command instead,
// `node packages/cli/bin/keen.js serve` (build first: npm run build -w @keen/cli and its deps).
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values } = parseArgs({ options: { rounds: { type: "string", default: "3" }, built: { type: "boolean", default: false } } });
const rounds = Math.max(1, Number(values.rounds));
const built = values.built === true;

function start(dataDir: string): { child: ChildProcess; url: Promise<string> } {
  const args = built ? ["packages/cli/bin/keen.js", "serve"] : ["--import", "tsx", "packages/server/src/testing/serve-process.ts"];
  const child = spawn(process.execPath, args, {
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

/** Spawn → first 200 from /readyz (polled every 10 ms once the port is known). */
async function timeToReady(dataDir: string): Promise<number> {
  const started = performance.now();
  const { child, url } = start(dataDir);
  try {
    const base = await url;
    for (;;) {
      const res = await fetch(`${base}/readyz`).catch(() => undefined);
      if (res?.status === 200) return performance.now() - started;
      await new Promise((r) => setTimeout(r, 10));
    }
  } finally {
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    await exited;
  }
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const first: number[] = [];
const existing: number[] = [];
console.log(`${built ? "built keen serve" : "sources through tsx"}; load average before: ${loadavg().map((l) => l.toFixed(2)).join(" ")} (${rounds} rounds)`);
for (let round = 1; round <= rounds; round++) {
  const dataDir = await mkdtemp(join(tmpdir(), "keen-bench-ready-"));
  try {
    first.push(await timeToReady(dataDir));
    existing.push(await timeToReady(dataDir));
    console.log(`round ${round}: new data dir ${first.at(-1)!.toFixed(0)} ms, existing ${existing.at(-1)!.toFixed(0)} ms`);
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
}
console.log(`median time to ready: new data dir ${median(first).toFixed(0)} ms (target ≤ 6000), existing ${median(existing).toFixed(0)} ms (target ≤ 2000)`);
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
