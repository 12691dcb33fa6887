/**
 * In-process overhead of keen's agent loop: a scripted 20-turn run at zero model latency,
 * next to the bare SDK sending the very same 20 request bodies (recorded from the keen run,
 * conversation growing turn by turn) to the same kind of offline server, so the server's own
 * work is alike on both sides and the difference is keen's.
 *
 *   npx tsx bench/run-overhead.ts [--turns 20] [--rounds 5]
 */
import { parseArgs } from "node:util";
import Anthropic from "@anthropic-ai/sdk";
import { anthropic, builtinTools, LocalWorkspace, startRun } from "../packages/agent-core/src/index.js";
import { reply, startMessagesServer } from "../packages/agent-core/src/testing/index.js";
import { createTestRepo } from "../packages/agent-core/src/workspace/test-repo.js";

const { values } = parseArgs({ options: { turns: { type: "string", default: "20" }, rounds: { type: "string", default: "5" } } });
const turns = Number(values.turns);
const rounds = Number(values.rounds);

const files = Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`src/module-${i}.ts`, `export const value${i} = ${i};\n`.repeat(20)]));
const policy = (_request: unknown, { index }: { index: number }) =>
  index % turns < turns - 1 ? reply.toolUse("read_file", { path: `src/module-${index % 10}.ts` }) : reply.text("done");

let recorded: Array<Record<string, any>> = [];

async function keenRound(): Promise<number> {
  const server = await startMessagesServer({ policy });
  const dir = await createTestRepo(files);
  const workspace = await LocalWorkspace.open(dir, { sandbox: false });
  const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "bench", baseURL: server.url });
  const started = performance.now();
  // In the checkout itself (branch: false): the loop's own cost, without the run branch's fork.
  const run = startRun({ vision: "Read the modules", workspace, model, tools: builtinTools(), maxTurns: turns + 1, commit: false, branch: false });
  const result = await run.result;
  const elapsed = performance.now() - started;
  await server.close();
  if (result.status !== "success" || server.requests.length !== turns) throw new Error(`bench run failed: ${result.status}`);
  recorded = server.requests.map((r) => r.body);
  return elapsed;
}

async function bareRound(): Promise<number> {
  const server = await startMessagesServer({ policy });
  const client = new Anthropic({ apiKey: "bench", baseURL: server.url, maxRetries: 0 });
  const started = performance.now();
  for (const body of recorded) {
    const { stream: _stream, ...params } = body;
    await client.messages.stream(params as Anthropic.MessageStreamParams).finalMessage();
  }
  const elapsed = performance.now() - started;
  await server.close();
  return elapsed;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

await keenRound(); // warm-up: module loading and JIT
await bareRound();
const keen: number[] = [];
const bare: number[] = [];
for (let i = 0; i < rounds; i++) {
  keen.push(await keenRound());
  bare.push(await bareRound());
}
const keenPerTurn = median(keen) / turns;
const barePerTurn = median(bare) / turns;
console.log(`scripted run: ${turns} turns × ${rounds} rounds, zero model latency, Node ${process.version}`);
console.log(`keen agent loop      ${keenPerTurn.toFixed(2)} ms/turn (median round ${median(keen).toFixed(0)} ms)`);
console.log(`bare SDK requests    ${barePerTurn.toFixed(2)} ms/turn (median round ${median(bare).toFixed(0)} ms)`);
console.log(`keen overhead        ${(keenPerTurn - barePerTurn).toFixed(2)} ms/turn (${(keenPerTurn / barePerTurn).toFixed(2)}× the bare SDK)`);
console.log(`peak RSS             ${(process.resourceUsage().maxRSS / 1024).toFixed(1)} MiB`);
