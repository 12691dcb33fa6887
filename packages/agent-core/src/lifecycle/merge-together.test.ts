// Children that finish together are merged with one update of the parent's worktree: each still
// gets its own merge commit, in child order, and a conflict still goes through the worktree.
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import type { KeenEvent } from "../events.js";
import { anthropic } from "../model/anthropic.js";
import { reply, startMessagesServer } from "../testing/index.js";
import { countGitCommands, withGitTrace } from "../workspace/git-trace.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo } from "../workspace/test-repo.js";
import { startTask } from "./start-task.js";
import type { TaskSnapshot } from "./task-state.js";
import { startTaskProcess } from "./testing/start-task-process.js";
import type { KillPoint } from "./testing/task-process.js";
import { done, explore, plan, scenarioPolicy, write, type Scenario } from "./testing/scenario.js";

const git = (dir: string, ...args: string[]) => execa("git", args, { cwd: dir }).then((r) => r.stdout.trim());

/**
 * Runs `scenario` (a root planning children A–D) with child A's last answer held back until B, C
 * and D have completed: when A is done, the three after it are done too.
 */
async function runWithALast(scenario: Scenario) {
  const dir = await createTestRepo({ "README.md": "# r\n", "shared.txt": "base\n" });
  const head = await git(dir, "rev-parse", "HEAD");
  let othersDone!: () => void;
  const others = new Promise<void>((resolve) => (othersDone = resolve));
  const server = await startMessagesServer({
    policy: scenarioPolicy(scenario, {
      onRequest: async (agent, phase, turn) => {
        if (agent === "A" && phase === "complete_task" && turn === 1) await others;
      },
    }),
  });
  const events: KeenEvent[] = [];
  let commands: Record<string, number> = {};
  try {
    const workspace = await LocalWorkspace.open(dir, { sandbox: false });
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
    const traced = await withGitTrace(async () => {
      const run = startTask({ vision: "Build the parts", workspace, model, maxConcurrency: 4, limits: { maxDepth: 1, maxChildren: 4 } });
      const completed = new Set<string>();
      run.on("agent.completed", (event) => {
        completed.add(event.agentId);
        if (["B", "C", "D"].every((id) => completed.has(id))) othersDone();
      });
      for await (const event of run) events.push(event);
      return run.result;
    });
    expect(traced.value.status, traced.value.summary).toBe("success");
    commands = countGitCommands(traced.events);
  } finally {
    await server.close();
  }
  // The user's checkout is where it was.
  expect(await git(dir, "rev-parse", "HEAD")).toBe(head);
  expect(await git(dir, "status", "--porcelain")).toBe("");
  const merges = events.filter((event): event is Extract<KeenEvent, { type: "git.merge" }> => event.type === "git.merge");
  const branch = merges[0]!.into;
  return { dir, merges, branch, commands };
}

const parts = (extra: Scenario = {}): Scenario => ({
  root: { finish_explore: [explore("PLAN")], submit_plan: [plan(["A", "B", "C", "D"].map((label) => ({ title: `Part ${label}` })))], complete_task: [done("All merged.")] },
  A: { complete_task: [write("src/a.ts", "export const a = 1;\n"), done("A written.")] },
  B: { complete_task: [write("src/b.ts", "export const b = 1;\n"), done("B written.")] },
  C: { complete_task: [write("src/c.ts", "export const c = 1;\n"), done("C written.")] },
  D: { complete_task: [write("src/d.ts", "export const d = 1;\n"), done("D written.")] },
  ...extra,
});

describe("children that finished together", () => {
  it("are merged with one update of the parent's worktree, each with its own merge commit in child order", async () => {
    const { dir, merges, branch, commands } = await runWithALast(parts());
    expect(merges.map((merge) => [merge.branch.split("/").pop(), merge.result])).toEqual([
      [expect.stringMatching(/A$/), "merged"],
      [expect.stringMatching(/B$/), "merged"],
      [expect.stringMatching(/C$/), "merged"],
      [expect.stringMatching(/D$/), "merged"],
    ]);
    // One worktree update (merge --ff-only) for the four; each merge made from git's objects.
    expect(commands.merge).toBe(1);
    expect(commands["merge-tree"]).toBe(4);
    // The run branch's first-parent history: the four merges, newest first, each of its child's tip.
    const firstParent = (await git(dir, "rev-list", "--first-parent", "--merges", branch)).split("\n");
    expect(firstParent).toEqual(merges.map((merge) => merge.sha).reverse());
    for (const merge of merges) {
      expect(await git(dir, "rev-parse", `${merge.sha}^2`)).toBe(await git(dir, "rev-parse", merge.branch));
      expect(await git(dir, "log", "-1", "--format=%s", merge.sha!)).toMatch(new RegExp(`^Merge ${merge.branch}: Part [A-D]$`));
    }
    for (const label of ["a", "b", "c", "d"]) expect(await git(dir, "show", `${branch}:src/${label}.ts`)).toBe(`export const ${label} = 1;`);
  });

  it("stop at a child that conflicts with one merged before it; that one is merged in the worktree and resolved, and the rest follow", async () => {
    const { dir, merges, branch, commands } = await runWithALast(
      parts({
        root: {
          finish_explore: [explore("PLAN")],
          submit_plan: [plan(["A", "B", "C", "D"].map((label) => ({ title: `Part ${label}` })))],
          complete_merge: [write("shared.txt", "B and C\n"), reply.toolUse("complete_merge", { summary: "Kept both." })],
          complete_task: [done("All merged.")],
        },
        B: { complete_task: [write("shared.txt", "B\n"), done("B written.")] },
        C: { complete_task: [write("shared.txt", "C\n"), done("C written.")] },
      }),
    );
    expect(merges.map((merge) => [merge.branch.split("/").pop(), merge.result, merge.conflictedFiles])).toEqual([
      [expect.stringMatching(/A$/), "merged", []],
      [expect.stringMatching(/B$/), "merged", []],
      [expect.stringMatching(/C$/), "resolved", ["shared.txt"]],
      [expect.stringMatching(/D$/), "merged", []],
    ]);
    // A and B together (one update), C's merge in the worktree, D's alone after it.
    expect(commands["merge-tree"]).toBe(3);
    expect(commands.merge).toBe(3);
    expect(await git(dir, "show", `${branch}:shared.txt`)).toBe("B and C");
    expect(await git(dir, "show", `${branch}:src/d.ts`)).toBe("export const d = 1;");
    expect((await git(dir, "rev-list", "--first-parent", "--merges", branch)).split("\n")).toHaveLength(4);
  });
});

describe("a run killed after a merge of children that finished together, before its snapshot", () => {
  /** Starts the fan-out in a process of its own, holding child A back as above, and resumes it after each kill. */
  async function killChain(killAt: KillPoint[]) {
    const repo = await createTestRepo({ "README.md": "# r\n" });
    const snapshotPath = join(await mkdtemp(join(tmpdir(), "keen-merge-kill-")), "run.json");
    const finals = new Set<string>();
    let othersDone!: () => void;
    const others = new Promise<void>((resolve) => (othersDone = resolve));
    const server = await startMessagesServer({
      policy: scenarioPolicy(parts(), {
        onRequest: async (agent, phase, turn) => {
          if (phase !== "complete_task" || turn !== 1) return;
          if (agent === "A") {
            // B, C and D have asked for their last answer: each then commits and completes.
            await others;
            await new Promise((resolve) => setTimeout(resolve, 1_000));
          } else if (["B", "C", "D"].includes(agent) && finals.add(agent).size === 3) othersDone();
        },
      }),
    });
    try {
      const config = { repo, baseURL: server.url, snapshotPath, vision: "Build the parts", maxConcurrency: 4 };
      const first = await startTaskProcess({ ...config, mode: "start", killAt });
      // What the kill left: the run branch's merges against what the snapshot records.
      const left = JSON.parse(await readFile(snapshotPath, "utf8")) as TaskSnapshot;
      const leftRoot = left.agents.find((agent) => agent.id === "root")!;
      const mergedInGit = (await git(repo, "rev-list", "--first-parent", "--merges", leftRoot.branch)).split("\n").filter(Boolean).length;
      const last = first.signal === "SIGKILL" ? await startTaskProcess({ ...config, mode: "resume", killAt: [] }) : first;
      const snapshot = JSON.parse(await readFile(snapshotPath, "utf8")) as TaskSnapshot;
      const root = snapshot.agents.find((agent) => agent.id === "root")!;
      const trees: Record<string, string> = {};
      for (const agent of snapshot.agents) trees[agent.id] = await git(repo, "rev-parse", `${agent.branch}^{tree}`);
      return {
        signals: [first.signal ?? first.exitCode, ...(last === first ? [] : [last.signal ?? last.exitCode])],
        left: { mergedInGit, recorded: Object.fromEntries(Object.entries(leftRoot.merges).map(([id, merge]) => [id, merge.status])) },
        outcome: {
          trees,
          merges: Object.fromEntries(Object.entries(root.merges).map(([id, merge]) => [id, merge.status])),
          mergeCommits: (await git(repo, "rev-list", "--first-parent", "--merges", root.branch)).split("\n").length,
          worktrees: (await git(repo, "worktree", "list")).split("\n").length,
          checkout: await git(repo, "status", "--porcelain"),
        },
        stderr: String(last.stderr),
      };
    } finally {
      await server.close();
    }
  }

  it("resumes from the commit before that merge and ends as the uninterrupted run", async () => {
    const [reference, killed] = await Promise.all([killChain([]), killChain([{ name: "as A's merge is reported", on: "git.merge", agent: "A" }])]);
    expect(reference.signals, reference.stderr).toEqual([0]);
    expect(reference.outcome.merges).toEqual({ A: "merged", B: "merged", C: "merged", D: "merged" });
    expect(killed.signals, killed.stderr).toEqual(["SIGKILL", 0]);
    // The kill came after the run branch had moved past the merges, before the snapshot said so.
    expect(killed.left.mergedInGit).toBeGreaterThanOrEqual(2);
    expect(killed.left.recorded).toEqual({ A: "in_progress", B: "pending", C: "pending", D: "pending" });
    expect(killed.outcome).toEqual(reference.outcome);
    expect(killed.outcome.mergeCommits).toBe(4);
  }, 120_000);
});
