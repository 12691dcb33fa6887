import { readdir, readFile } from "node:fs/promises";
import { dirname } from "node:path";
import type { ResultPromise } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import { TaskSnapshot } from "@keen/agent-core";
import { reply, startMessagesServer, type MessagesServer } from "@keen/agent-core/testing";
import { scriptedTreePolicy, type ScriptedTask } from "./demo/scripted-tree.js";
import { branches, git, gitRepo, keen, keenInProcess, parseNdjson, snapshotFiles } from "./testing/keen-process.js";

const write = (path: string, content: string) => reply.toolUse("write_file", { path, content });

const tree: ScriptedTask = {
  title: "Alpha and beta",
  instructions: "Alpha and beta",
  subtasks: [
    { title: "Alpha", instructions: "Write the alpha files.", work: [write("alpha.txt", "a1\n"), write("alpha2.txt", "a2\n")], summary: "Alpha done." },
    { title: "Beta", instructions: "Write the beta files.", work: [write("beta.txt", "b1\n"), write("beta2.txt", "b2\n")], summary: "Beta done." },
  ],
  work: [write("SUMMARY.md", "alpha and beta\n")],
  summary: "Both merged.",
};

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

/**
 * Starts `keen run` and interrupts it with `signal` when beta asks for its second turn of
 * COMPLETE (alpha is finished by then: one child at a time). The reply is held back so the
 * signal lands while a request is in flight. Later requests are recorded as `after:…`.
 */
async function interruptedRun(signal: "SIGKILL" | "SIGINT") {
  const calls: string[] = [];
  let child: ResultPromise | undefined;
  let interrupted = false;
  server = await startMessagesServer({
    policy: scriptedTreePolicy(tree, {
      onRequest: async ({ agent, phase, turn }) => {
        calls.push(`${interrupted ? "after" : "before"}:${agent}:${phase}:${turn}`);
        if (!interrupted && agent === "B" && phase === "complete_task" && turn === 1) {
          interrupted = true;
          child!.kill(signal);
          await new Promise((resolve) => setTimeout(resolve, 500));
        }
      },
    }),
  });
  const dir = await gitRepo();
  const env = { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url };
  child = keen(["run", "Alpha and beta", "--repo", dir, "--json", "--no-sandbox", "--concurrency", "1"], env);
  const first = await child;
  return { dir, env, calls, first };
}

/** The run's branch, as its snapshot names it. */
async function runBranchOf(dir: string): Promise<string> {
  const [snapshotPath] = await snapshotFiles(dir);
  const rb = TaskSnapshot.parse(JSON.parse(await readFile(snapshotPath!, "utf8"))).runBranch;
  expect(rb).toMatch(/^keen\/[0-9a-f]{8}$/);
  return rb!;
}

async function expectFinished(dir: string) {
  const rb = await runBranchOf(dir);
  expect(await branches(dir)).toEqual(["main", rb, `${rb}-agents/summon-A`, `${rb}-agents/summon-B`].sort());
  expect(await git(dir, "ls-tree", "-r", "--name-only", rb)).toBe("README.md\nSUMMARY.md\nalpha.txt\nalpha2.txt\nbeta.txt\nbeta2.txt");
  expect(await git(dir, "show", `${rb}:beta2.txt`)).toBe("b2");
  // The user's checkout never moved.
  expect(await git(dir, "ls-tree", "-r", "--name-only", "main")).toBe("README.md");
  expect(await git(dir, "status", "--porcelain")).toBe("");
  expect((await git(dir, "worktree", "list")).split("\n")).toHaveLength(1);
}

describe("keen run --resume", { timeout: 120_000 }, () => {
  it("finishes a run whose process was killed with SIGKILL mid-tree, without re-running finished agents", async () => {
    const { dir, env, calls, first } = await interruptedRun("SIGKILL");
    expect(first.signal).toBe("SIGKILL");
    const killedEvents = parseNdjson(String(first.stdout));
    expect(killedEvents.some((e) => e.type === "run.completed")).toBe(false);

    const [snapshotPath] = await snapshotFiles(dir);
    const saved = TaskSnapshot.parse(JSON.parse(await readFile(snapshotPath!, "utf8")));
    expect(saved.agents.find((a) => a.id === "A")).toMatchObject({ phase: "DONE", status: "success" });
    expect(saved.agents.find((a) => a.id === "B")!.phase).toBe("COMPLETE");

    // No --repo: the snapshot's default location names its repository.
    const resumed = await keen(["run", "--resume", snapshotPath!, "--json", "--no-sandbox"], env);
    expect(resumed.exitCode, resumed.stderr).toBe(0);
    const events = parseNdjson(resumed.stdout);
    // Numbering continues strictly after the killed process's last emitted event (kept in the event log).
    const lastKilled = killedEvents.at(-1)!.seq;
    expect(events[0]!.seq).toBeGreaterThan(lastKilled);
    expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => events[0]!.seq + i));
    expect(events.at(-1)).toMatchObject({ type: "run.completed", status: "success", summary: "Both merged.", snapshot: snapshotPath });
    expect(events.filter((e) => e.type === "agent.spawned")).toEqual([]);
    // A finished child is merged while its siblings still run, so A's merge may have happened
    // before the kill; across both processes each child ends merged, A before B, and B after the resume.
    const merges = [...killedEvents, ...events].flatMap((e) => (e.type === "git.merge" ? [[e.branch, e.result]] : []));
    expect(merges.filter(([branch]) => branch === `${saved.runBranch}-agents/summon-A`).at(-1)).toEqual([`${saved.runBranch}-agents/summon-A`, "merged"]);
    expect(merges.at(-1)).toEqual([`${saved.runBranch}-agents/summon-B`, "merged"]);
    expect(merges.findIndex(([branch]) => branch === `${saved.runBranch}-agents/summon-A`)).toBeLessThan(merges.findIndex(([branch]) => branch === `${saved.runBranch}-agents/summon-B`));
    expect(events.some((e) => e.type === "git.merge" && e.branch === `${saved.runBranch}-agents/summon-B`)).toBe(true);
    // Alpha had finished and never asks again; beta repeats only its interrupted turn.
    const after = calls.filter((c) => c.startsWith("after:"));
    expect(after.some((c) => c.includes(":A:"))).toBe(false);
    expect(after.filter((c) => c.includes(":B:"))).toEqual(["after:B:complete_task:1", "after:B:complete_task:2"]);
    await expectFinished(dir);
  });

  it("stops cleanly on Ctrl-C (SIGINT): exit 130, a resumable snapshot and the command to resume", async () => {
    const { dir, env, first } = await interruptedRun("SIGINT");
    expect(first.exitCode).toBe(130);
    const [snapshotPath] = await snapshotFiles(dir);
    expect(first.stderr).toContain(`keen: interrupted; agents stopped, snapshot saved at ${snapshotPath}; resume with: keen run --resume ${snapshotPath}`);
    // Stdout stays NDJSON to the end, which records the abort.
    const events = parseNdjson(String(first.stdout));
    expect(events.at(-1)).toMatchObject({ type: "run.completed", status: "aborted" });
    expect(events.filter((e) => e.type === "agent.completed").map((e) => e.type === "agent.completed" && [e.agentId, e.status])).toEqual([
      ["A", "success"],
      ["B", "aborted"],
      ["root", "aborted"],
    ]);
    // The snapshot is the last state before the interrupt, not the aborted one: it can go on.
    const saved = TaskSnapshot.parse(JSON.parse(await readFile(snapshotPath!, "utf8")));
    expect(saved.agents.find((a) => a.id === "root")!.phase).toBe("SUMMON");
    expect((await git(dir, "worktree", "list")).split("\n").length).toBeGreaterThanOrEqual(1);

    const resumed = await keen(["run", "--resume", snapshotPath!, "--no-sandbox", "--repo", dir], { ...env, KEEN_FORCE_TTY: "0" });
    expect(resumed.exitCode, resumed.stderr).toBe(0);
    expect(resumed.stdout).toContain(`resuming ${saved.runId} from ${snapshotPath}`);
    expect(resumed.stdout).toContain(`merge ${saved.runBranch}-agents/summon-B into ${saved.runBranch}: merged`);
    await expectFinished(dir);
  });

  it("resumes on its run branch whatever branch the user's checkout is on now, and leaves the checkout there", async () => {
    const { dir, env } = await interruptedRun("SIGKILL");
    const [snapshotPath] = await snapshotFiles(dir);
    await git(dir, "checkout", "-q", "-b", "elsewhere");
    const result = await keen(["run", "--resume", snapshotPath!, "--no-sandbox", "--json"], env);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(await git(dir, "branch", "--show-current")).toBe("elsewhere");
    await git(dir, "checkout", "-q", "main");
    await git(dir, "branch", "-q", "-D", "elsewhere");
    await expectFinished(dir);
  });

  it("lists runs with keen runs, resumes the newest interrupted one with --last and by id, and prunes finished ones", async () => {
    const { dir, env } = await interruptedRun("SIGKILL");
    const [snapshotPath] = await snapshotFiles(dir);
    const runId = TaskSnapshot.parse(JSON.parse(await readFile(snapshotPath!, "utf8"))).runId;

    const listed = await keenInProcess(["runs", "--repo", dir, "--json"]);
    expect(listed.exitCode, listed.stderr).toBe(0);
    const [run, ...rest] = listed.stdout.trim().split("\n").map((line) => JSON.parse(line));
    expect(rest).toEqual([]);
    expect(run).toMatchObject({ runId, vision: "Alpha and beta", status: "interrupted", branch: await runBranchOf(dir), snapshot: snapshotPath });
    expect(run.tokens).toBeGreaterThan(0);
    expect(Date.now() - Date.parse(run.startedAt)).toBeLessThan(10 * 60_000);
    const table = await keenInProcess(["runs", "--repo", dir]);
    expect(table.stdout).toMatch(/^ID +STATUS +BRANCH +TOKENS +COST +STARTED \(UTC\) +VISION$/m);
    expect(table.stdout).toMatch(new RegExp(`^${runId} +interrupted +keen/[0-9a-f]{8} +\\S+ +- +\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d +Alpha and beta$`, "m"));

    // Nothing finished yet: prune keeps the interrupted run.
    expect((await keenInProcess(["runs", "--repo", dir, "--prune"])).stdout.trim()).toBe("no finished runs to remove");
    expect(await snapshotFiles(dir)).toEqual([snapshotPath]);

    // An unknown id is refused with a pointer to keen runs; --last finds the interrupted run.
    expect((await keenInProcess(["run", "--resume", "run_nope", "--repo", dir, "--no-sandbox"], env)).stderr.trim()).toMatch(/^keen: no run "run_nope" in .*\(see keen runs\)$/);
    const resumed = await keen(["run", "--last", "--repo", dir, "--no-sandbox"], { ...env, KEEN_FORCE_TTY: "0" });
    expect(resumed.exitCode, resumed.stderr).toBe(0);
    expect(resumed.stdout).toContain(`resuming ${runId} from ${snapshotPath}`);
    await expectFinished(dir);

    const after = JSON.parse((await keenInProcess(["runs", "--repo", dir, "--json"])).stdout);
    expect(after).toMatchObject({ runId, status: "success", startedAt: run.startedAt });
    // A finished run is not resumed again, by id prefix either, and --last finds nothing.
    expect((await keenInProcess(["run", "--resume", runId.slice(0, 12), "--repo", dir, "--no-sandbox"], env)).stderr).toMatch(/already finished \(success\); nothing to resume/);
    expect((await keenInProcess(["run", "--last", "--repo", dir, "--no-sandbox"], env)).stderr).toMatch(/^keen: no interrupted run to resume in /);

    const pruned = await keenInProcess(["runs", "--repo", dir, "--prune"]);
    expect(pruned.stdout.trim()).toBe(`removed 1 finished run: ${runId}`);
    expect(await readdir(dirname(snapshotPath!))).toEqual([]);
    expect((await keenInProcess(["runs", "--repo", dir])).stdout).toMatch(/^no runs in /);
  });
});
