/**
 * keen's start cost before the first model request, beside its references, in one run:
 *
 * - module load: importing the built `@keen/agent-core` next to importing `@anthropic-ai/sdk`
 *   alone and an empty Node start, each in a fresh process (medians of `--rounds` after a warm-up);
 * - git subprocesses started before the first request, for `startRun` and `startTask`.
 *
 *   npm run build -w @keen/agent-core && npx tsx bench/startup.ts [--rounds 7]
 */
import childProcess from "node:child_process";
import { existsSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { resolve } from "node:path";
import { parseArgs } from "node:util";

const { values } = parseArgs({ options: { rounds: { type: "string", default: "7" } } });
const rounds = Math.max(5, Number(values.rounds));
const dist = resolve("packages/agent-core/dist/index.js");
if (!existsSync(dist)) throw new Error(`${dist} is missing: run \`npm run build -w @keen/agent-core\` first`);

/** Milliseconds a fresh `node` takes to run `code` as a module, measured inside it (start-up of Node itself excluded). */
function loadTime(specifier: string | null): number {
  const code = specifier
    ? `const t = performance.now(); await import(${JSON.stringify(specifier)}); console.log(performance.now() - t);`
    : "const t = performance.now(); console.log(performance.now() - t);";
  const out = childProcess.execFileSync(process.execPath, ["--input-type=module", "-e", code], { cwd: resolve("packages/agent-core"), encoding: "utf8" });
  return Number(out.trim());
}

function wallTime(specifier: string | null): number {
  const code = specifier ? `await import(${JSON.stringify(specifier)});` : "";
  const started = performance.now();
  childProcess.execFileSync(process.execPath, ["--input-type=module", "-e", code], { cwd: resolve("packages/agent-core") });
  return performance.now() - started;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const subjects = { "@keen/agent-core": dist, "@anthropic-ai/sdk": "@anthropic-ai/sdk", "empty module": null } as const;
const load: Record<string, number[]> = {};
const wall: Record<string, number[]> = {};
for (const specifier of Object.values(subjects)) loadTime(specifier); // warm-up: file cache
for (let round = 0; round < rounds; round++) {
  for (const [name, specifier] of Object.entries(subjects)) {
    (load[name] ??= []).push(loadTime(specifier));
    (wall[name] ??= []).push(wallTime(specifier));
  }
}
const sdkLoad = median(load["@anthropic-ai/sdk"]!);
const emptyWall = median(wall["empty module"]!);
console.log(`module load, ${rounds} rounds after a warm-up, Node ${process.version}`);
for (const name of Object.keys(subjects)) {
  const l = median(load[name]!);
  const w = median(wall[name]!);
  console.log(
    `${name.padEnd(18)} import ${l.toFixed(1).padStart(7)} ms (${(l / sdkLoad).toFixed(2)}× the SDK)   process ${w.toFixed(0).padStart(5)} ms (${(w / emptyWall).toFixed(2)}× an empty node)`,
  );
}

// Git subprocesses before the first request: count spawns until the server sees a request
// (keen spawns each git itself here, not from its launcher's shell, so each one is seen).
process.env.KEEN_GIT_LAUNCHER = "0";
const spawned: string[] = [];
let counting = true;
const originalSpawn = childProcess.spawn;
childProcess.spawn = ((command: string, ...rest: unknown[]) => {
  if (counting) spawned.push(command);
  return (originalSpawn as (...args: unknown[]) => unknown)(command, ...rest);
}) as typeof childProcess.spawn;
syncBuiltinESMExports();

const { anthropic, builtinTools, LocalWorkspace, startRun, startTask } = await import(dist);
const { reply, startMessagesServer } = await import(resolve("packages/agent-core/dist/testing.js"));
const { createTestRepo } = await import("../packages/agent-core/src/workspace/test-repo.js");

async function gitBeforeFirstRequest(start: (options: Record<string, unknown>) => { result: Promise<unknown>; abort(): void }): Promise<number> {
  const repo = await createTestRepo({ "README.md": "# bench\n", "src/index.ts": "export {};\n" });
  let first!: () => void;
  const firstRequest = new Promise<void>((done) => (first = done));
  const server = await startMessagesServer({
    policy: () => {
      counting = false;
      first();
      return reply.text("done");
    },
  });
  const workspace = await LocalWorkspace.open(repo, { sandbox: false });
  spawned.length = 0;
  counting = true;
  // In the checkout itself (branch: false): the loop's own cost, without the run branch's fork.
  const run = start({ vision: "Say done", workspace, model: anthropic({ model: "claude-sonnet-5-5", apiKey: "bench", baseURL: server.url }), tools: builtinTools(), commit: false, branch: false });
  await firstRequest;
  run.abort();
  await run.result.catch(() => {});
  await server.close();
  return spawned.filter((command) => command === "git" || command.endsWith("/git")).length;
}

console.log(`git subprocesses before the first request: startRun ${await gitBeforeFirstRequest(startRun)}, startTask ${await gitBeforeFirstRequest(startTask)}`);
