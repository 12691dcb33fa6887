/**
 * Crash safety of a turn: a run SIGKILLed at each point of a turn and resumed ends with the same
 * branches, the same files and the same merge outcomes as an uninterrupted run. The kills are
 * triggered by the task process itself at an exact event or snapshot (never by a timer), and
 * every kill point is repeated.
 */
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { reply, startMessagesServer, type MessagesServer } from "../testing/index.js";
import { createTestRepo } from "../workspace/test-repo.js";
import type { TaskSnapshot } from "./task-state.js";
import { startTaskProcess } from "./testing/start-task-process.js";
import type { KillPoint } from "./testing/task-process.js";
import { done, explore, plan, scenarioPolicy, write, type Scenario } from "./testing/scenario.js";

// Chains of kills, run side by side; `npm run test:chaos` runs more (KEEN_KILL_REPEATS).
const REPEATS = Number(process.env.KEEN_KILL_REPEATS ?? 2);
const FILES = { "README.md": "# test\n", "lib.txt": "keep\none\ntwo\nthree\nfour\nend\n" };

const edit = (path: string, old_string: string, new_string: string) => reply.toolUse("edit_file", { path, old_string, new_string });

/**
 * A writes a check that C's change breaks; the root validates every merge with it, so C must be
 * rolled back. A's first turn inserts a line (an edit whose new text holds the old one) and runs
 * a command that appends to a file; B writes, then edits.
 */
const scenario: Scenario = {
  root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Alpha" }, { title: "Beta" }, { title: "Gamma" }], "if [ -f check.sh ]; then sh check.sh; fi")] },
  A: {
    complete_task: [
      reply.toolUses(["edit_file", { path: "lib.txt", old_string: "keep\n", new_string: "keep\nalpha()\n" }], ["run_command", { command: "echo ran >> ran.log && sleep 3" }]),
      write("check.sh", "grep -qx end lib.txt\n"),
      done("Alpha done."),
    ],
  },
  B: { complete_task: [write("beta.txt", "b1\n"), edit("beta.txt", "b1\n", "b1\nb2\n"), done("Beta done.")] },
  C: { complete_task: [edit("lib.txt", "end\n", "fin\n"), done("Gamma done.")] },
};

/**
 * The kill points of one chain: each process of the chain dies at the first point it reaches
 * that no earlier process of the chain died at, and the next resumes, until one finishes. So
 * every point is hit once per chain, and some resumes start from a resume that was itself killed.
 */
const KILL_POINTS: KillPoint[] = [
  { name: "right after A's edit_file insertion completes", on: "tool.completed", agent: "A", tool: "edit_file" },
  { name: "during A's long run_command, in the turn of its edit", on: "file", agent: "A", tool: "run_command", file: "ran.log" },
  { name: "as B starts an edit_file while A works in COMPLETE", on: "tool.started", agent: "B", tool: "edit_file" },
  { name: "between the snapshot that has A done and the next event", on: "snapshot", agent: "A", phase: "DONE" },
];

let server: MessagesServer;
beforeAll(async () => {
  server = await startMessagesServer({ policy: scenarioPolicy(scenario) });
});
afterAll(async () => {
  await server?.close();
});

interface Outcome {
  trees: Record<string, string>;
  lib: string;
  merges: Record<string, string>;
  checkpointRefs: string;
  worktrees: number;
}

function taskProcess(mode: "start" | "resume", repo: string, snapshotPath: string, killAt: KillPoint[]) {
  return startTaskProcess({ mode, repo, baseURL: server.url, snapshotPath, vision: "Build it", maxConcurrency: 2, onConflict: "rollback", killAt });
}

/** Each agent's branch tree (by agent id, so run branch names may differ), the root's lib.txt and merges. */
async function outcome(repo: string, snapshotPath: string): Promise<Outcome> {
  const git = async (...args: string[]) => (await execa("git", args, { cwd: repo })).stdout;
  const snapshot = JSON.parse(await readFile(snapshotPath, "utf8")) as TaskSnapshot;
  const trees: Record<string, string> = { checkout: await git("rev-parse", "HEAD^{tree}") };
  for (const agent of snapshot.agents) trees[agent.id] = await git("rev-parse", `${agent.branch}^{tree}`);
  const root = snapshot.agents.find((agent) => agent.id === "root")!;
  return {
    trees,
    lib: await git("show", `${root.branch}:lib.txt`),
    merges: Object.fromEntries(Object.entries(root.merges).map(([id, merge]) => [id, merge.status])),
    checkpointRefs: await git("for-each-ref", "refs/keen/checkpoints"),
    worktrees: (await git("worktree", "list")).split("\n").length,
  };
}

async function eventsOf(snapshotPath: string): Promise<Array<Record<string, any>>> {
  return (await readFile(`${snapshotPath}.events.ndjson`, "utf8"))
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as Record<string, any>);
}

/** Runs `tasks` at most `limit` at a time. */
async function pooled<T>(tasks: Array<() => Promise<T>>, limit: number): Promise<T[]> {
  const results: T[] = new Array(tasks.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < tasks.length) {
        const index = next++;
        results[index] = await tasks[index]!();
      }
    }),
  );
  return results;
}

async function killed(snapshotPath: string): Promise<string[]> {
  return (await readFile(`${snapshotPath}.kills`, "utf8").catch(() => "")).split("\n").filter(Boolean);
}

/** One run: started, then resumed after every kill until a process finishes. */
async function chain(index: number, folder: string, points: KillPoint[]) {
  const repo = await createTestRepo(FILES);
  const snapshotPath = join(folder, `run-${index}.json`);
  const processes = [await taskProcess("start", repo, snapshotPath, points)];
  while (processes.at(-1)!.signal === "SIGKILL" && processes.length <= points.length) {
    const hit = await killed(snapshotPath);
    processes.push(await taskProcess("resume", repo, snapshotPath, points.filter((point) => !hit.includes(point.name))));
  }
  const last = processes.at(-1)!;
  return { index, processes, last, snapshotPath, kills: await killed(snapshotPath), outcome: await outcome(repo, snapshotPath) };
}

describe("resume after SIGKILL at every point of a turn", () => {
  it("ends every resumed run with the uninterrupted run's branches, files and merge outcomes", async () => {
    const folder = await mkdtemp(join(tmpdir(), "keen-kill-"));
    const all = await Promise.all([chain(0, folder, []), ...Array.from({ length: REPEATS }, (_, i) => chain(i + 1, folder, KILL_POINTS))]);
    const [reference, ...chains] = all;

    expect(reference!.last.exitCode, String(reference!.last.stderr)).toBe(0);
    // The uninterrupted run: A's line inserted once, C's breaking change rolled back, nothing left behind.
    expect(reference!.outcome.lib).toBe("keep\nalpha()\none\ntwo\nthree\nfour\nend");
    expect(reference!.outcome.merges).toEqual({ A: "merged", B: "merged", C: "rolled_back" });
    expect(reference!.outcome.checkpointRefs).toBe("");
    expect(reference!.outcome.worktrees).toBe(1);

    for (const run of chains) {
      const name = `chain ${run.index}`;
      // Every kill point was hit, each by its own SIGKILL, and the last resume finished the run.
      const story = [
        ...run.processes.map((p) => `${p.signal ?? p.exitCode}: ${String(p.stdout)} ${String(p.stderr).slice(-1500)}`),
        run.kills.join(" | "),
        ...(await eventsOf(run.snapshotPath)).filter((e) => /tool.started|turn.restored|run.started|agent.completed/.test(e.type)).map((e) => `${e.seq} ${e.type} ${e.agentId} ${e.name ?? ""} ${JSON.stringify(e.files ?? "")}`),
      ].join("\n");
      expect([...run.kills].sort(), `${name}\n${story}`).toEqual(KILL_POINTS.map((point) => point.name).sort());
      expect(run.processes.slice(0, -1).map((p) => p.signal), name).toEqual(KILL_POINTS.map(() => "SIGKILL"));
      expect(run.last.exitCode, `${name}: ${String(run.last.stderr)}`).toBe(0);
      expect(run.outcome, `${name}\n${story}`).toEqual(reference!.outcome);

      // The kills inside A's first COMPLETE turn made the resumes put A's files back before
      // repeating it: the insertion undone, and after the command had run, its file removed too.
      const restored = (await eventsOf(run.snapshotPath)).filter((event) => event.type === "turn.restored" && event.agentId === "A");
      expect(restored.length, name).toBeGreaterThanOrEqual(2);
      expect(restored.every((event) => event.result === "restored"), name).toBe(true);
      expect(restored.map((event) => [...event.files].sort().join(",")), name).toContain("lib.txt,ran.log");
    }
  }, 300_000);
});
