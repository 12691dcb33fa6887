/**
 * keen's cost per turn as a conversation grows: a scripted lifecycle run of `--turns` turns
 * (reads of 4 kB files, every third turn a note written) at zero model latency, with each
 * snapshot written to a file as `keen run` writes it, next to the bare SDK sending the very same
 * request bodies (recorded from the keen run) to the same kind of offline server and doing the
 * same file work between them (reading the file, writing the note), as a loop on the bare SDK would,
 * and beside the same bodies replayed without that work (the SDK and the server alone).
 *
 * Per round and side, the time between consecutive model requests is taken over the first and
 * the last fifth of the turns; the medians of those over the rounds are printed with keen's
 * cost above the bare loop, so a cost that grows with the conversation shows as a larger figure
 * at the end than at the start. Rounds alternate the sides after a warm-up of each.
 *
 * `--baseline DIR` adds a side: the same run by the agent-core and snapshot file of another
 * checkout of keen (e.g. a worktree of an earlier commit, with its own `npm ci`), in the same
 * alternating rounds, for a before/after comparison under one load.
 *
 *   npx tsx bench/long-run.ts [--turns 150] [--rounds 5] [--baseline DIR]
 */
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import Anthropic from "@anthropic-ai/sdk";
import * as agentCore from "../packages/agent-core/src/index.js";
import { done, explore, scenarioPolicy, write } from "../packages/agent-core/src/lifecycle/testing/scenario.js";
import { reply, startMessagesServer } from "../packages/agent-core/src/testing/index.js";
import { createTestRepo } from "../packages/agent-core/src/workspace/test-repo.js";
import * as snapshotFile from "../packages/cli/src/snapshot-file.js";

const { values } = parseArgs({ options: { turns: { type: "string", default: "150" }, rounds: { type: "string", default: "5" }, baseline: { type: "string" } } });
const turns = Number(values.turns);
const rounds = Math.max(5, Number(values.rounds));

const files = Object.fromEntries(
  Array.from({ length: 20 }, (_, i) => [`src/module-${i}.ts`, `export const value${i} = ${i}; // a line of about fifty characters\n`.repeat(64)]),
);
const steps = Array.from({ length: turns }, (_, i) =>
  i % 3 === 2 ? write(`notes/note-${i}.md`, `note ${i}\n`.repeat(40)) : reply.toolUse("read_file", { path: `src/module-${i % 20}.ts` }),
);
const policy = scenarioPolicy({ root: { finish_explore: [explore("COMPLETE")], complete_task: [...steps, done("Read and noted.")] } });

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
/** Median gap between consecutive requests over the first and the last fifth of them. */
function turnTimes(receivedAt: number[]): { early: number; late: number } {
  const gaps = receivedAt.slice(1).map((t, i) => t - receivedAt[i]!);
  const fifth = Math.max(3, Math.floor(gaps.length / 5));
  // The first two gaps hold the run's start (explore, the phase change): left out.
  return { early: median(gaps.slice(2, 2 + fifth)), late: median(gaps.slice(-fifth)) };
}

/** The modules one side runs: this checkout's, or the baseline's. */
interface Build {
  core: typeof agentCore;
  files: typeof snapshotFile;
}
const own: Build = { core: agentCore, files: snapshotFile };
const baselineBuild: Build | undefined = values.baseline
  ? {
      core: (await import(pathToFileURL(resolve(values.baseline, "packages/agent-core/src/index.ts")).href)) as typeof agentCore,
      files: (await import(pathToFileURL(resolve(values.baseline, "packages/cli/src/snapshot-file.ts")).href)) as typeof snapshotFile,
    }
  : undefined;

let recorded: Array<Record<string, unknown>> = [];
let snapshotBytes = 0;

async function keenRound(build: Build = own): Promise<{ early: number; late: number; total: number }> {
  const { anthropic, LocalWorkspace, startTask } = build.core;
  const { SnapshotFile } = build.files;
  const server = await startMessagesServer({ policy });
  const dir = await createTestRepo(files);
  const scratch = await mkdtemp(join(tmpdir(), "keen-long-"));
  const snapshot = new SnapshotFile(join(scratch, "run.json"));
  const workspace = await LocalWorkspace.open(dir, { sandbox: false });
  const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "bench", baseURL: server.url });
  const started = performance.now();
  const result = await startTask({
    vision: "Read the modules and take notes",
    workspace,
    model,
    limits: { maxDepth: 0, maxTurnsPerPhase: turns + 5 },
    onSnapshot: (s) => snapshot.write(s),
  }).result;
  const total = performance.now() - started;
  await (snapshot as { close?: () => Promise<void> }).close?.();
  await server.close();
  if (result.status !== "success" || snapshot.error) throw new Error(`keen round failed: ${result.status} ${snapshot.error?.message ?? ""}`);
  const requests = server.requests.filter((r) => r.path === "/v1/messages");
  recorded = requests.map((r) => r.body);
  snapshotBytes = (await stat(snapshot.path)).size;
  await rm(scratch, { recursive: true, force: true });
  await rm(dir, { recursive: true, force: true });
  return { ...turnTimes(requests.map((r) => r.receivedAt)), total };
}

/** The file work of the tool calls in `content`, done as an application on the bare SDK would do it. */
async function bareTools(dir: string, content: Anthropic.ContentBlock[]): Promise<void> {
  for (const block of content) {
    if (block.type !== "tool_use") continue;
    const input = block.input as { path: string; content: string };
    if (block.name === "read_file") await readFile(join(dir, input.path), "utf8");
    else if (block.name === "write_file") {
      await mkdir(dirname(join(dir, input.path)), { recursive: true });
      await writeFile(join(dir, input.path), input.content);
    }
  }
}

/**
 * The bare SDK sending the recorded bodies: with the file work of each response's tool calls
 * done before the next request (`withTools`, a loop as an application would write it), or
 * without it (a replay: the SDK and the server alone).
 */
async function bareRound(withTools: boolean): Promise<{ early: number; late: number; total: number }> {
  const server = await startMessagesServer({ policy });
  const dir = await createTestRepo(files);
  const client = new Anthropic({ apiKey: "bench", baseURL: server.url, maxRetries: 0 });
  const started = performance.now();
  for (const body of recorded) {
    const { stream: _stream, ...params } = body;
    const message = await client.messages.stream(params as unknown as Anthropic.MessageStreamParams).finalMessage();
    if (withTools) await bareTools(dir, message.content);
  }
  const total = performance.now() - started;
  await server.close();
  await rm(dir, { recursive: true, force: true });
  return { ...turnTimes(server.requests.map((r) => r.receivedAt)), total };
}

type Times = { early: number; late: number; total: number };
await keenRound(); // warm-up: module loading and JIT
if (baselineBuild) await keenRound(baselineBuild);
await bareRound(true);
await bareRound(false);
const keen: Times[] = [];
const baseline: Times[] = [];
const loop: Times[] = [];
const replay: Times[] = [];
for (let i = 0; i < rounds; i++) {
  keen.push(await keenRound());
  if (baselineBuild) baseline.push(await keenRound(baselineBuild));
  loop.push(await bareRound(true));
  replay.push(await bareRound(false));
}
const pick = (side: Times[], key: keyof Times) => median(side.map((r) => r[key]));
const last = recorded.at(-1)!;
const ms = (x: number) => `${x.toFixed(1)} ms`;
const above = (x: number) => `${x >= 0 ? "+" : "−"}${Math.abs(x).toFixed(1)} ms`;
const line = (cells: string[]) => console.log(`  ${cells[0]!.padEnd(36)}${cells.slice(1).map((c) => c.padStart(12)).join("")}`);
console.log(`long conversation: ${recorded.length} requests, the last one ${(JSON.stringify(last).length / 1024).toFixed(0)} kB, snapshot ${(snapshotBytes / 1024).toFixed(0)} kB; median of ${rounds} rounds after a warm-up, Node ${process.version}`);
line(["", "keen", "bare loop", "keen − loop", "bare replay", "keen − rep."]);
const rows = (side: Times[]) => {
  for (const [label, key] of [["per turn, first fifth of the turns", "early"], ["per turn, last fifth of the turns", "late"], ["whole run", "total"]] as const) {
    line([label, ms(pick(side, key)), ms(pick(loop, key)), above(pick(side, key) - pick(loop, key)), ms(pick(replay, key)), above(pick(side, key) - pick(replay, key))]);
  }
};
rows(keen);
if (baselineBuild) {
  console.log(`  baseline ${values.baseline}:`);
  rows(baseline);
}
console.log(`  bare loop: the bare SDK doing the tool calls' file work between requests; bare replay: the SDK and the server alone`);
console.log(`  target: keen's cost per turn ≤ +5 ms above the bare loop, at the end of a long conversation as at its start`);
