/**
 * A run killed during the first turn that writes in the worktree it just checked out, and
 * resumed: that turn's checkpoint is the worktree's commit, named in the snapshot (no ref), and
 * the resume puts the commit's files back before repeating the turn, so the run ends as an
 * uninterrupted one does. Real processes, a real SIGKILL at an exact point (a file the turn's
 * command writes appearing), no timers.
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
import { done, explore, scenarioPolicy } from "./testing/scenario.js";

const FILES = { "README.md": "# test\n", "lib.txt": "keep\none\nend\n" };

// EXPLORE only reads; COMPLETE's first turn writes a file, edits one, deletes one and runs a
// command that appends to a log and is killed while it sleeps.
const scenario = {
  root: {
    finish_explore: [reply.toolUse("list_files", {}), explore("COMPLETE")],
    complete_task: [
      reply.toolUses(
        ["write_file", { path: "notes/hello.md", content: "# Hello\n" }],
        ["edit_file", { path: "lib.txt", old_string: "keep\n", new_string: "keep\nadded\n" }],
        ["run_command", { command: "rm README.md && echo ran >> ran.log && sleep 3" }],
      ),
      done("Wrote the note."),
    ],
  },
};

const KILL: KillPoint = { name: "during the first writing turn's command", on: "file", agent: "root", tool: "run_command", file: "ran.log" };

let server: MessagesServer;
beforeAll(async () => {
  server = await startMessagesServer({ policy: scenarioPolicy(scenario) });
});
afterAll(async () => {
  await server?.close();
});

function taskProcess(mode: "start" | "resume", repo: string, snapshotPath: string, killAt: KillPoint[]) {
  return startTaskProcess({ mode, repo, baseURL: server.url, snapshotPath, vision: "Write a note", killAt });
}

const gitIn = async (repo: string, ...args: string[]) => (await execa("git", args, { cwd: repo })).stdout;
const readSnapshotAt = async (path: string) => JSON.parse(await readFile(path, "utf8")) as TaskSnapshot;

/** The run branch's files, as `<path> <content>` lines. */
async function filesOf(repo: string, snapshotPath: string): Promise<string[]> {
  const branch = (await readSnapshotAt(snapshotPath)).agents.find((agent) => agent.id === "root")!.branch;
  const paths = (await gitIn(repo, "ls-tree", "-r", "--name-only", branch)).split("\n");
  return Promise.all(paths.map(async (path) => `${path} ${JSON.stringify(await gitIn(repo, "show", `${branch}:${path}`))}`));
}

describe("resume after SIGKILL in the first writing turn of a fresh worktree", () => {
  it("puts back the commit's files from the snapshot (no checkpoint ref was saved), repeats the turn, and ends as the uninterrupted run", async () => {
    const folder = await mkdtemp(join(tmpdir(), "keen-kill-fresh-"));
    const [referenceRepo, repo] = await Promise.all([createTestRepo(FILES), createTestRepo(FILES)]);
    const referencePath = join(folder, "reference.json");
    const snapshotPath = join(folder, "killed.json");
    const [reference, first] = await Promise.all([taskProcess("start", referenceRepo, referencePath, []), taskProcess("start", repo, snapshotPath, [KILL])]);
    expect(reference.exitCode, String(reference.stderr)).toBe(0);
    expect(first.signal, String(first.stderr)).toBe("SIGKILL");

    // Killed mid-turn: the turn's writes are in the worktree, its checkpoint is only in the snapshot.
    expect(await gitIn(repo, "for-each-ref", "refs/keen/checkpoints")).toBe("");
    const atKill = (await readSnapshotAt(snapshotPath)).agents.find((agent) => agent.id === "root")!;
    const base = (await readSnapshotAt(snapshotPath)).base!;
    expect(atKill.checkpointCommit).toEqual({ turn: atKill.turns, commit: base });

    const resumed = await taskProcess("resume", repo, snapshotPath, []);
    expect(resumed.exitCode, String(resumed.stderr)).toBe(0);
    const events = (await readFile(`${snapshotPath}.events.ndjson`, "utf8"))
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as Record<string, any>);
    const restored = events.filter((event) => event.type === "turn.restored");
    expect(restored).toEqual([expect.objectContaining({ agentId: "root", turn: atKill.turns, result: "restored", files: ["README.md", "lib.txt", "notes/hello.md", "ran.log"] })]);

    // The same files as the uninterrupted run: the insertion made once, the log appended once.
    const files = await filesOf(repo, snapshotPath);
    expect(files).toEqual(await filesOf(referenceRepo, referencePath));
    expect(files).toEqual(['lib.txt "keep\\nadded\\none\\nend"', 'notes/hello.md "# Hello"', 'ran.log "ran"']);
    expect(await gitIn(repo, "for-each-ref", "refs/keen/checkpoints")).toBe("");
  }, 120_000);
});
