/**
 * Main-thread cost of one keen git call (`git rev-parse HEAD` through `gitRaw`), with keen's git
 * launcher against `child_process.spawn` (`KEEN_GIT_LAUNCHER=0`), in a process that has loaded
 * `fetch` as `keen run` has (the fork behind `spawn` costs more the more the process has mapped).
 * Alternating blocks of 21 calls; medians of: the time `gitRaw` blocks before it returns its
 * promise, the main thread's busy time until the call settles, and the call's wall time.
 *
 *   npx tsx bench/git-call.ts
 */
import { execFileSync } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { gitRaw } from "../packages/agent-core/src/workspace/git.js";
import { createTestRepo } from "../packages/agent-core/src/workspace/test-repo.js";

const server = createServer((_request, response) => response.end("x")).listen(0);
await new Promise((resolve) => server.on("listening", resolve));
await (await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`)).text();
server.close();

const dir = await createTestRepo({ "README.md": "# bench\n" });
const target = { gitDir: execFileSync("git", ["rev-parse", "--absolute-git-dir"], { cwd: dir, encoding: "utf8" }).trim(), workTree: dir };
await gitRaw(target, ["rev-parse", "HEAD"]);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!.toFixed(2);
for (const mode of ["spawn", "launcher", "spawn", "launcher"]) {
  if (mode === "spawn") process.env.KEEN_GIT_LAUNCHER = "0";
  else delete process.env.KEEN_GIT_LAUNCHER;
  const blocked: number[] = [];
  const busy: number[] = [];
  const wall: number[] = [];
  for (let i = 0; i < 21; i++) {
    const before = performance.eventLoopUtilization();
    const start = performance.now();
    const call = gitRaw(target, ["rev-parse", "HEAD"]);
    blocked.push(performance.now() - start);
    await call;
    wall.push(performance.now() - start);
    busy.push(performance.eventLoopUtilization(before).active);
  }
  console.log(`${mode.padEnd(9)} blocked in the call ${median(blocked)} ms   main thread busy ${median(busy)} ms   settled after ${median(wall)} ms`);
}
