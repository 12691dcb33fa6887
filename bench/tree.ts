/**
 * Cost of keen's git plumbing and of a whole agent tree:
 *
 *  1. one fork + merge on a repository of 2,000 files (worktree on a new branch, one file
 *     written and committed in it, `--no-ff` merge back, worktree removed), next to the
 *     same steps done with plain git commands in the same run;
 *  2. wall time and peak RSS of a scripted 7-agent tree (root → 2 children → 4 grandchildren)
 *     at zero model latency against the offline Messages API server.
 *
 * Each part runs in its own Node process so its peak RSS is its own.
 *
 *   npx tsx bench/tree.ts [--files 2000] [--rounds 7]
 */
import { execFileSync } from "node:child_process";
import { rm } from "node:fs/promises";
import { parseArgs } from "node:util";
import { execa } from "execa";
import { anthropic, LocalWorkspace, startTask } from "../packages/agent-core/src/index.js";
import { done, explore, plan, scenarioPolicy, write } from "../packages/agent-core/src/lifecycle/testing/scenario.js";
import { startMessagesServer } from "../packages/agent-core/src/testing/index.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "../packages/agent-core/src/workspace/test-repo.js";

const { values } = parseArgs({
  options: {
    files: { type: "string", default: "2000" },
    rounds: { type: "string", default: "7" },
    part: { type: "string" },
  },
});
const fileCount = Number(values.files);
const rounds = Number(values.rounds);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const peakRssMiB = () => process.resourceUsage().maxRSS / 1024;
const row = (label: string, value: string) => console.log(`  ${label.padEnd(58)}${value}`);

function sampleFiles(count: number): Record<string, string> {
  const files: Record<string, string> = {};
  for (let i = 0; i < count; i++) {
    files[`src/dir-${Math.floor(i / 50)}/file-${i}.ts`] = `export const value${i} = ${i};\n// line\n`.repeat(10);
  }
  return files;
}

/** Part 1: keen's fork + merge against plain git, alternating, on the same repository. */
async function forkMerge(): Promise<void> {
  const dir = await createTestRepo(sampleFiles(fileCount));
  const workspace = await LocalWorkspace.open(dir, { sandbox: false });
  const git = (cwd: string, ...args: string[]) => execa("git", args, { cwd, env: TEST_GIT_IDENTITY });

  const keenRound = async (i: number) => {
    const started = performance.now();
    const child = await workspace.fork(`summon-K${i}`);
    await child.writeFile(`notes/keen-${i}.md`, `round ${i}\n`);
    await child.commit(`Round ${i}`);
    const merge = await workspace.merge(`summon-K${i}`, `Merge summon-K${i}`);
    await child.dispose();
    if (merge.status !== "merged") throw new Error(`merge ${i} did not merge cleanly`);
    return performance.now() - started;
  };
  const gitRound = async (i: number) => {
    const started = performance.now();
    const tree = `${dir}.wt-${i}`;
    await git(dir, "worktree", "add", "-q", "-b", `plain-${i}`, tree);
    await execa("sh", ["-c", `mkdir -p notes && echo "round ${i}" > notes/git-${i}.md`], { cwd: tree });
    await git(tree, "add", "-A");
    await git(tree, "commit", "-q", "-m", `Round ${i}`);
    await git(dir, "merge", "--no-ff", "-q", "-m", `Merge plain-${i}`, `plain-${i}`);
    await git(dir, "worktree", "remove", "--force", tree);
    return performance.now() - started;
  };

  const files = (await git(dir, "ls-files")).stdout.split("\n").length;
  await keenRound(0); // warm-up: file system caches, module loading
  await gitRound(0);
  const keen: number[] = [];
  const plain: number[] = [];
  for (let i = 1; i <= rounds; i++) {
    keen.push(await keenRound(i));
    plain.push(await gitRound(i));
  }
  await rm(dir, { recursive: true, force: true });
  const k = median(keen);
  const p = median(plain);
  console.log(`fork + merge, repository of ${files} files, median of ${rounds} rounds`);
  row("keen   fork → write → commit → merge --no-ff → dispose", `${k.toFixed(1)} ms`);
  row("git    worktree add → commit → merge --no-ff → remove", `${p.toFixed(1)} ms`);
  row("keen / plain git", `${(k / p).toFixed(2)}×`);
  row("peak RSS of this part", `${peakRssMiB().toFixed(1)} MiB`);
}

/** Part 2: a scripted 7-agent tree, zero model latency. */
async function tree(): Promise<void> {
  const leaf = (name: string) => ({ complete_task: [write(`src/${name}.ts`, `export const ${name} = true;\n`), done(`${name} written.`)] });
  const scenario = {
    root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Front" }, { title: "Back" }])], complete_task: [done("All merged.")] },
    A: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Pages" }, { title: "Styles" }])], complete_task: [done("Front merged.")] },
    B: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Routes" }, { title: "Models" }])], complete_task: [done("Back merged.")] },
    "A-A": leaf("pages"),
    "A-B": leaf("styles"),
    "B-A": leaf("routes"),
    "B-B": leaf("models"),
  };
  const timings: number[] = [];
  let agents = 0;
  let merges = 0;
  for (let i = 0; i <= rounds; i++) {
    const server = await startMessagesServer({ policy: scenarioPolicy(scenario) });
    const dir = await createTestRepo(sampleFiles(200));
    const workspace = await LocalWorkspace.open(dir, { sandbox: false });
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "bench", baseURL: server.url });
    const started = performance.now();
    const run = startTask({ vision: "Build the app", workspace, model, maxConcurrency: 2, limits: { maxDepth: 2 } });
    run.on("git.merge", () => void merges++);
    const result = await run.result;
    const elapsed = performance.now() - started;
    await server.close();
    await rm(dir, { recursive: true, force: true });
    if (result.status !== "success" || result.agents.length !== 7) throw new Error(`tree run failed: ${result.status}, ${result.agents.length} agents`);
    agents = result.agents.length;
    if (i > 0) timings.push(elapsed); // round 0 warms up
  }
  console.log(`agent tree: ${agents} agents (root → 2 children → 4 grandchildren), concurrency 2, zero model latency`);
  row(`wall time, median of ${rounds} runs`, `${median(timings).toFixed(0)} ms`);
  row(`merges per run`, `${merges / (rounds + 1)}`);
  row("peak RSS of this part", `${peakRssMiB().toFixed(1)} MiB`);
}

if (values.part === "fork-merge") await forkMerge();
else if (values.part === "tree") await tree();
else {
  console.log(`Node ${process.version}, git ${execFileSync("git", ["--version"]).toString().trim().replace("git version ", "")}`);
  for (const part of ["fork-merge", "tree"]) {
    execFileSync(process.execPath, [...process.execArgv, process.argv[1]!, "--part", part, "--files", String(fileCount), "--rounds", String(rounds)], {
      stdio: "inherit",
    });
  }
}
