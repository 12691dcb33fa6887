/**
 * Cost of keen's git plumbing and of agent trees, each beside its reference, in one run:
 *
 *  1. fork + merge of one child on a repository of 2,000 files (worktree on a new branch, one
 *     file written and committed in it, `--no-ff` merge back, worktree removed), next to the
 *     same steps done with plain git commands and with a `git clone --local` in their place
 *     (plain git also with its worktrees in a folder marked as keen marks its own, `chattr +T`,
 *     so keen's steps can be compared with the file system's share equal);
 *     and a sparse worktree holding only the paths a subtask names, next to `clone --local`;
 *  2. wall time and peak RSS of a scripted 7-agent tree (root → 2 children → 4 grandchildren)
 *     at zero model latency against the offline Messages API server;
 *  3. a root with 10 children at zero model latency next to 10 concurrent single-agent runs
 *     in one process (each on its own repository of the same size);
 *  4. memory per extra in-process agent: a root holding 1 child and one holding 10, every
 *     child parked on a model request, measured after a forced GC.
 *
 * Medians of `--rounds` after a warm-up; the sides of each comparison alternate within one
 * run. Each part runs in its own Node process so its peak RSS is its own.
 *
 *   npx tsx bench/tree.ts [--files 2000] [--rounds 7] [--part fork-merge|sparse|tree|fan-out|memory]
 */
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { execa } from "execa";
import { anthropic, LocalWorkspace, startTask } from "../packages/agent-core/src/index.js";
import { done, explore, fanOutScenario, plan, scenarioPolicy, write } from "../packages/agent-core/src/lifecycle/testing/scenario.js";
import { startMessagesServer } from "../packages/agent-core/src/testing/index.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "../packages/agent-core/src/workspace/test-repo.js";

const { values } = parseArgs({
  options: {
    files: { type: "string", default: "2000" },
    rounds: { type: "string", default: "7" },
    part: { type: "string" },
    agents: { type: "string", default: "1" },
  },
});
const fileCount = Number(values.files);
const rounds = Number(values.rounds);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/**
 * Runs keen's round and its references side by side: one warm-up each (file system caches,
 * module loading), then `rounds` alternating rounds; the median of each side, by name.
 */
async function sideBySide<Side extends string>(sides: Record<Side, (i: number) => Promise<number>>): Promise<Record<Side, number>> {
  const names = Object.keys(sides) as Side[];
  for (const name of names) await sides[name](0);
  const times = Object.fromEntries(names.map((name) => [name, [] as number[]])) as Record<Side, number[]>;
  for (let i = 1; i <= rounds; i++) {
    for (const name of names) times[name].push(await sides[name](i));
  }
  return Object.fromEntries(names.map((name) => [name, median(times[name])])) as Record<Side, number>;
}

/**
 * Git processes one round starts itself (not those git starts in turn, such as the checkout that
 * `worktree add` runs), counted through a `git` wrapper put first on PATH; run apart from the
 * timed rounds, which it would slow.
 */
async function countGitProcesses(round: () => Promise<unknown>): Promise<number> {
  const bin = await mkdtemp(join(tmpdir(), "keen-bench-git-"));
  const log = join(bin, "calls");
  const real = execFileSync("sh", ["-c", "command -v git"]).toString().trim();
  await writeFile(join(bin, "git"), `#!/bin/sh\necho x >> '${log}'\nexec '${real}' "$@"\n`, { mode: 0o755 });
  await writeFile(log, "");
  const path = process.env.PATH;
  process.env.PATH = `${bin}:${path}`;
  try {
    await round();
  } finally {
    process.env.PATH = path;
  }
  const count = (await readFile(log, "utf8")).split("\n").filter(Boolean).length;
  await rm(bin, { recursive: true, force: true });
  return count;
}
const peakRssMiB = () => process.resourceUsage().maxRSS / 1024;
const row = (label: string, value: string) => console.log(`  ${label.padEnd(72)}${value}`);

function sampleFiles(count: number): Record<string, string> {
  const files: Record<string, string> = {};
  for (let i = 0; i < count; i++) {
    files[`src/dir-${Math.floor(i / 50)}/file-${i}.ts`] = `export const value${i} = ${i};\n// line\n`.repeat(10);
  }
  return files;
}

/**
 * Part 1: keen's fork + merge against plain git and against `clone --local`, alternating, on the
 * same repository; then the same with `reuseWorktrees`, on a repository of its own.
 */
async function forkMerge(): Promise<void> {
  const fresh = await forkMergeBlock(false);
  const reused = await forkMergeBlock(true);
  console.log(`fork + merge of one child, repository of ${fresh.files} files, median of ${rounds} rounds`);
  const line = (label: string, ms: number, processes: number) => row(label, `${ms.toFixed(1).padStart(7)} ms   ${processes} git processes`);
  line("keen         fork → write → commit → merge --no-ff → dispose", fresh.k, fresh.counts.keen);
  line("plain git    worktree add → commit → merge --no-ff → remove", fresh.p, fresh.counts.plain);
  line("clone        clone --local → commit → fetch → merge → rm", fresh.c, fresh.counts.clone);
  const marked = fresh.spreadMarked ? "" : " (chattr +T failed here)";
  line(`plain git    the same in a folder marked +T as keen's${marked}`, fresh.ps, fresh.counts.plain);
  line(`clone        the same in the marked folder`, fresh.cs, fresh.counts.clone);
  line("checkout     worktree add → remove, nothing else", fresh.floor, 2);
  line("checkout     the same in the marked folder", fresh.spreadFloor, 2);
  row("keen / plain git (target ≤ 1.00×)", `${(fresh.k / fresh.p).toFixed(2)}×`);
  row("keen / clone --local (target ≤ 0.60×)", `${(fresh.k / fresh.c).toFixed(2)}×`);
  // keen's own steps against the references with their folders placed alike: the file system's share equal.
  row("keen / plain git, both in marked folders", `${(fresh.k / fresh.ps).toFixed(2)}×`);
  row("keen / clone --local, both in marked folders", `${(fresh.k / fresh.cs).toFixed(2)}×`);
  // What writing every file of a fresh worktree costs at least, placed as a person would and as keen does.
  row("checkout alone / clone --local", `${(fresh.floor / fresh.c).toFixed(2)}×`);
  row("checkout alone / clone --local, both in marked folders (keen's floor)", `${(fresh.spreadFloor / fresh.cs).toFixed(2)}×`);
  console.log(`the same with reuseWorktrees (each fork takes the worktree the previous round disposed), in a second run`);
  line("keen reuse   fork → write → commit → merge --no-ff → dispose", reused.k, reused.counts.keen);
  line("plain git    worktree add → commit → merge --no-ff → remove", reused.p, reused.counts.plain);
  line("clone        clone --local → commit → fetch → merge → rm", reused.c, reused.counts.clone);
  row("keen reuse / plain git (target ≤ 1.00×)", `${(reused.k / reused.p).toFixed(2)}×`);
  row("keen reuse / clone --local (target ≤ 0.60×)", `${(reused.k / reused.c).toFixed(2)}×`);
  row("peak RSS of this part", `${peakRssMiB().toFixed(1)} MiB`);
}

async function forkMergeBlock(reuseWorktrees: boolean) {
  const dir = await createTestRepo(sampleFiles(fileCount));
  const workspace = await LocalWorkspace.open(dir, { sandbox: false, reuseWorktrees });
  const git = (cwd: string, ...args: string[]) => execa("git", args, { cwd, env: TEST_GIT_IDENTITY });
  const writeNote = (cwd: string, name: string, i: number | string) => execa("sh", ["-c", `mkdir -p notes && echo "round ${i}" > notes/${name}-${i}.md`], { cwd });

  const keenRound = async (i: number | string) => {
    const started = performance.now();
    const child = await workspace.fork(`summon-K${i}`);
    await child.writeFile(`notes/keen-${i}.md`, `round ${i}\n`);
    await child.commit(`Round ${i}`);
    const merge = await workspace.merge(`summon-K${i}`, `Merge summon-K${i}`);
    await child.dispose();
    if (merge.status !== "merged") throw new Error(`merge ${i} did not merge cleanly`);
    return performance.now() - started;
  };
  // The plain git steps, with the worktree made next to the repository (as a person would) or,
  // as keen makes its own, in a folder marked as the top of a hierarchy (`chattr +T`).
  const gitSteps = (label: string, tree: (i: number | string) => string) => async (i: number | string) => {
    const started = performance.now();
    await git(dir, "worktree", "add", "-q", "-b", `${label}-${i}`, tree(i));
    await writeNote(tree(i), label, i);
    await git(tree(i), "add", "-A");
    await git(tree(i), "commit", "-q", "-m", `Round ${i}`);
    await git(dir, "merge", "--no-ff", "-q", "-m", `Merge ${label}-${i}`, `${label}-${i}`);
    await git(dir, "worktree", "remove", "--force", tree(i));
    return performance.now() - started;
  };
  const spreadDir = `${dir}.spread`;
  await mkdir(spreadDir);
  const spreadMarked = await execa("chattr", ["+T", spreadDir], { reject: false }).then((result) => result.exitCode === 0, () => false);
  const gitRound = gitSteps("plain", (i) => `${dir}.wt-${i}`);
  const spreadGitRound = gitSteps("spread", (i) => join(spreadDir, `wt-${i}`));
  const cloneSteps = (label: string, place: (i: number | string) => string) => async (i: number | string) => {
    const started = performance.now();
    const clone = place(i);
    await git(dir, "clone", "-q", "--local", dir, clone);
    await writeNote(clone, label, i);
    await git(clone, "add", "-A");
    await git(clone, "commit", "-q", "-m", `Round ${i}`);
    await git(dir, "fetch", "-q", clone, "HEAD");
    await git(dir, "merge", "--no-ff", "-q", "-m", `Merge ${label}-${i}`, "FETCH_HEAD");
    await rm(clone, { recursive: true, force: true });
    return performance.now() - started;
  };
  const cloneRound = cloneSteps("clone", (i) => `${dir}.clone-${i}`);
  const spreadCloneRound = cloneSteps("spread-clone", (i) => join(spreadDir, `clone-${i}`));
  // The checkout alone: a new worktree of every file, then its removal, with no commit or merge;
  // next to the repository, and in the marked folder.
  const checkoutRound = (tree: (i: number | string) => string) => async (i: number | string) => {
    const started = performance.now();
    await git(dir, "worktree", "add", "-q", "--detach", tree(i));
    await git(dir, "worktree", "remove", "--force", tree(i));
    return performance.now() - started;
  };
  const floorRound = checkoutRound((i) => `${dir}.floor-${i}`);
  const spreadFloorRound = checkoutRound((i) => join(spreadDir, `floor-${i}`));

  const files = (await git(dir, "ls-files")).stdout.split("\n").length;
  // The placed-alike and checkout-alone sides are printed for the fresh forks only.
  const references = { k: keenRound, p: gitRound, c: cloneRound };
  const { k, p, ps, c, cs, floor, spreadFloor } = reuseWorktrees
    ? { ...(await sideBySide(references)), ps: NaN, cs: NaN, floor: NaN, spreadFloor: NaN }
    : await sideBySide({ ...references, ps: spreadGitRound, cs: spreadCloneRound, floor: floorRound, spreadFloor: spreadFloorRound });
  const counts = {
    keen: await countGitProcesses(() => keenRound("count")),
    plain: await countGitProcesses(() => gitRound("count")),
    clone: await countGitProcesses(() => cloneRound("count")),
  };
  await workspace.releaseWorktrees();
  await rm(dir, { recursive: true, force: true });
  await rm(spreadDir, { recursive: true, force: true });
  return { files, k, p, ps, c, cs, floor, spreadFloor, spreadMarked, counts };
}

/**
 * Part 1b: a worktree holding only the paths a subtask names. keen's side uses
 * `fork(branch, { paths })`; the plain git side builds the same
 * sparse worktree by hand; both against `clone --local`, which copies the whole checkout.
 */
async function sparse(): Promise<void> {
  const dir = await createTestRepo(sampleFiles(fileCount));
  const workspace = await LocalWorkspace.open(dir, { sandbox: false });
  const git = (cwd: string, ...args: string[]) => execa("git", args, { cwd, env: TEST_GIT_IDENTITY });
  const paths = ["src/dir-3/"];
  let keenFiles = 0;

  const keenRound = async (i: number) => {
    const started = performance.now();
    const child = await workspace.fork(`sparse-K${i}`, { paths });
    const elapsed = performance.now() - started;
    keenFiles = (await git(child.root, "ls-files", "-t")).stdout.split("\n").filter((line) => line.startsWith("H ")).length;
    await child.dispose();
    return elapsed;
  };
  const gitRound = async (i: number) => {
    const started = performance.now();
    const tree = `${dir}.sparse-${i}`;
    await git(dir, "worktree", "add", "-q", "--no-checkout", "-b", `sparse-plain-${i}`, tree);
    await git(tree, "sparse-checkout", "set", "--no-cone", ...paths.map((p) => `/${p}`));
    await git(tree, "checkout", "-q");
    const elapsed = performance.now() - started;
    await git(dir, "worktree", "remove", "--force", tree);
    return elapsed;
  };
  const cloneRound = async (i: number) => {
    const started = performance.now();
    const clone = `${dir}.clone-${i}`;
    await git(dir, "clone", "-q", "--local", dir, clone);
    const elapsed = performance.now() - started;
    await rm(clone, { recursive: true, force: true });
    return elapsed;
  };

  const { k, p, c } = await sideBySide({ k: keenRound, p: gitRound, c: cloneRound });
  await rm(dir, { recursive: true, force: true });
  const total = fileCount;
  console.log(`worktree for a subtask naming ${paths.join(", ")} (${keenFiles} of ${total} files checked out by keen), median of ${rounds} rounds`);
  row("keen         fork(branch, { paths })", `${k.toFixed(1)} ms`);
  row("plain git    worktree add --no-checkout → sparse-checkout → checkout", `${p.toFixed(1)} ms`);
  row("clone        clone --local", `${c.toFixed(1)} ms`);
  row("keen / clone --local (target ≤ 0.20×)", `${(k / c).toFixed(2)}×`);
  row("sparse plain git / clone --local", `${(p / c).toFixed(2)}×`);
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

/** Part 3: a root with 10 children against 10 concurrent single-agent runs in this process. */
async function fanOut(): Promise<void> {
  const count = 10;
  const treeRound = async () => {
    const server = await startMessagesServer({ policy: scenarioPolicy(fanOutScenario(count)) });
    const dir = await createTestRepo(sampleFiles(200));
    const workspace = await LocalWorkspace.open(dir, { sandbox: false });
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "bench", baseURL: server.url });
    const started = performance.now();
    const run = startTask({ vision: "Build the parts", workspace, model, maxConcurrency: count, limits: { maxDepth: 1, maxChildren: count, maxAgents: count + 1 } });
    let merged = 0;
    run.on("git.merge", (event) => void (event.result === "merged" && merged++));
    const result = await run.result;
    const elapsed = performance.now() - started;
    await server.close();
    await rm(dir, { recursive: true, force: true });
    if (result.status !== "success" || merged !== count) throw new Error(`fan-out run failed: ${result.status}, ${merged} merges`);
    return elapsed;
  };
  const singlesRound = async () => {
    const server = await startMessagesServer({
      policy: scenarioPolicy({ root: { complete_task: [write("src/part.ts", "export const part = true;\n"), done("Part written.")] } }),
    });
    const dirs = await Promise.all(Array.from({ length: count }, () => createTestRepo(sampleFiles(200))));
    const workspaces = await Promise.all(dirs.map((dir) => LocalWorkspace.open(dir, { sandbox: false })));
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "bench", baseURL: server.url });
    const started = performance.now();
    const results = await Promise.all(
      workspaces.map((workspace) => startTask({ vision: "Write the part", workspace, model, limits: { maxDepth: 0 } }).result),
    );
    const elapsed = performance.now() - started;
    await server.close();
    await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
    if (results.some((r) => r.status !== "success")) throw new Error("a single run failed");
    return elapsed;
  };
  await treeRound(); // warm-up
  await singlesRound();
  const tree: number[] = [];
  const singles: number[] = [];
  for (let i = 0; i < rounds; i++) {
    tree.push(await treeRound());
    singles.push(await singlesRound());
  }
  const t = median(tree);
  const s = median(singles);
  console.log(`fan-out: a root with ${count} children vs ${count} concurrent single-agent runs, zero model latency, median of ${rounds} rounds`);
  row(`root → ${count} children (explore, plan, ${count} forks + merges, complete)`, `${t.toFixed(0)} ms`);
  row(`${count} × single-agent run at once (explore, write, complete)`, `${s.toFixed(0)} ms`);
  row("tree / single runs (target ≤ 1.50×)", `${(t / s).toFixed(2)}×`);
  row("peak RSS of this part", `${peakRssMiB().toFixed(1)} MiB`);
}

/**
 * Part 4 probe: a root with `agents` children, every child parked on its first request of the
 * complete phase; when all are parked, GC and read memory, then let them finish. Prints JSON.
 */
async function memoryProbe(agents: number): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error("the memory probe needs --expose-gc");
  let parked = 0;
  let release!: () => void;
  const released = new Promise<void>((done) => (release = done));
  let reading: { heap: number; rss: number } | undefined;
  const server = await startMessagesServer({
    policy: scenarioPolicy(fanOutScenario(agents), {
      onRequest: async (agent, phase, turn) => {
        if (agent === "root" || phase !== "complete_task" || turn !== 0) return;
        if (++parked === agents) {
          gc();
          gc();
          const usage = process.memoryUsage();
          reading = { heap: usage.heapUsed + usage.external + usage.arrayBuffers, rss: usage.rss };
          release();
        }
        await released;
      },
    }),
  });
  const dir = await createTestRepo(sampleFiles(200));
  const workspace = await LocalWorkspace.open(dir, { sandbox: false });
  const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "bench", baseURL: server.url });
  const run = startTask({ vision: "Build the parts", workspace, model, maxConcurrency: agents, limits: { maxDepth: 1, maxChildren: agents, maxAgents: agents + 1 } });
  const result = await run.result;
  await server.close();
  await rm(dir, { recursive: true, force: true });
  if (result.status !== "success" || !reading) throw new Error(`memory probe run failed: ${result.status}`);
  console.log(JSON.stringify(reading));
}

/** Part 4: memory per extra agent, from probes with 1 and 10 children in fresh processes. */
function memory(): void {
  const probe = (agents: number) =>
    JSON.parse(
      execFileSync(process.execPath, [...process.execArgv, "--expose-gc", process.argv[1]!, "--part", "memory-probe", "--agents", String(agents)], { encoding: "utf8" }),
    ) as { heap: number; rss: number };
  probe(1); // warm-up
  const one: Array<{ heap: number; rss: number }> = [];
  const ten: Array<{ heap: number; rss: number }> = [];
  const samples = Math.max(5, Math.min(rounds, 7));
  for (let i = 0; i < samples; i++) {
    one.push(probe(1));
    ten.push(probe(10));
  }
  const MiB = 1024 * 1024;
  const heapPer = (median(ten.map((r) => r.heap)) - median(one.map((r) => r.heap))) / 9 / MiB;
  const rssPer = (median(ten.map((r) => r.rss)) - median(one.map((r) => r.rss))) / 9 / MiB;
  console.log(`memory per extra in-process agent (root + 1 child vs root + 10 children, all parked on a request), median of ${samples}`);
  row("JS heap + external after GC, per extra agent (≈ 1 MiB)", `${heapPer.toFixed(2)} MiB`);
  row("RSS, per extra agent", `${rssPer.toFixed(2)} MiB`);
  row("RSS with root + 10 children", `${(median(ten.map((r) => r.rss)) / MiB).toFixed(1)} MiB`);
}

const PARTS = ["fork-merge", "sparse", "tree", "fan-out", "memory"] as const;
if (values.part === "fork-merge") await forkMerge();
else if (values.part === "sparse") await sparse();
else if (values.part === "tree") await tree();
else if (values.part === "fan-out") await fanOut();
else if (values.part === "memory") memory();
else if (values.part === "memory-probe") await memoryProbe(Number(values.agents));
else {
  console.log(`Node ${process.version}, git ${execFileSync("git", ["--version"]).toString().trim().replace("git version ", "")}`);
  for (const part of PARTS) {
    execFileSync(process.execPath, [...process.execArgv, process.argv[1]!, "--part", part, "--files", String(fileCount), "--rounds", String(rounds)], {
      stdio: "inherit",
    });
  }
}
