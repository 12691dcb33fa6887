/**
 * Crash safety of turns that save no checkpoint: after a turn that wrote only through keen's file
 * tools, the next turn's files are the last checkpoint plus the journal in the snapshot. A run
 * SIGKILLed inside such turns (and inside a command run from a journal) and resumed ends with
 * exactly the uninterrupted run's files: contents, deletions and permission bits.
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

const FILES = { "README.md": "# test\n", "old.txt": "old\n", "tool.sh": "echo hi\n" };

/**
 * A's COMPLETE turns: 0 writes a.txt (the conversation's first turn saves a checkpoint; the
 * journal takes a.txt); 1 runs a command from that journal (no checkpoint) that appends to
 * a.txt, deletes old.txt and makes tool.sh executable; 2 writes a.txt again and rewrites tool.sh
 * (a checkpoint after the command; the journal takes both, tool.sh no longer executable); 3
 * edits a.txt; 4 writes b.txt and reads it; 5 ends.
 */
const scenario: Scenario = {
  root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Alpha" }])] },
  A: {
    complete_task: [
      write("a.txt", "a1\n"),
      reply.toolUse("run_command", { command: "rm old.txt && chmod +x tool.sh && echo cmd >> a.txt && echo ran >> ran.log && sleep 3" }),
      reply.toolUses(["write_file", { path: "a.txt", content: "a2\n" }], ["write_file", { path: "tool.sh", content: "echo hey\n" }]),
      reply.toolUse("edit_file", { path: "a.txt", old_string: "a2\n", new_string: "a3\n" }),
      reply.toolUses(["write_file", { path: "b.txt", content: "b\n" }], ["read_file", { path: "b.txt" }]),
      done("Alpha done."),
    ],
  },
};

const KILL_POINTS: KillPoint[] = [
  { name: "during the command run from a journal, once it has written", on: "file", agent: "A", tool: "run_command", file: "ran.log" },
  { name: "right after the edit of a journaled file", on: "tool.completed", agent: "A", tool: "edit_file" },
  { name: "after a journaled turn's write, before its snapshot", on: "tool.started", agent: "A", tool: "read_file" },
];

let server: MessagesServer;
beforeAll(async () => {
  server = await startMessagesServer({ policy: scenarioPolicy(scenario) });
});
afterAll(async () => {
  await server?.close();
});

function taskProcess(mode: "start" | "resume", repo: string, snapshotPath: string, killAt: KillPoint[]) {
  return startTaskProcess({ mode, repo, baseURL: server.url, snapshotPath, vision: "Build it", killAt });
}

async function eventsOf(snapshotPath: string): Promise<Array<Record<string, any>>> {
  return (await readFile(`${snapshotPath}.events.ndjson`, "utf8"))
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as Record<string, any>);
}

/** One run, started and resumed after every kill until a process finishes; A's branch as `ls-tree` prints it (modes, blobs, paths). */
async function chain(folder: string, name: string, points: KillPoint[]) {
  const repo = await createTestRepo(FILES);
  const snapshotPath = join(folder, `${name}.json`);
  const kills = async () => (await readFile(`${snapshotPath}.kills`, "utf8").catch(() => "")).split("\n").filter(Boolean);
  const processes = [await taskProcess("start", repo, snapshotPath, points)];
  while (processes.at(-1)!.signal === "SIGKILL" && processes.length <= points.length) {
    const hit = await kills();
    processes.push(await taskProcess("resume", repo, snapshotPath, points.filter((point) => !hit.includes(point.name))));
  }
  const snapshot = JSON.parse(await readFile(snapshotPath, "utf8")) as TaskSnapshot;
  const branch = snapshot.agents.find((agent) => agent.id === "A")!.branch;
  const git = async (...args: string[]) => (await execa("git", args, { cwd: repo })).stdout;
  return {
    processes,
    kills: await kills(),
    files: await git("ls-tree", "-r", branch),
    aText: await git("show", `${branch}:a.txt`),
    checkpointRefs: await git("for-each-ref", "refs/keen/checkpoints"),
    restored: (await eventsOf(snapshotPath)).filter((event) => event.type === "turn.restored" && event.agentId === "A"),
  };
}

describe("resume after SIGKILL in turns that saved no checkpoint", () => {
  it("puts back the last checkpoint plus the journal: the files byte for byte, deletions and modes included", async () => {
    const folder = await mkdtemp(join(tmpdir(), "keen-journal-kill-"));
    const [reference, killed] = await Promise.all([chain(folder, "reference", []), chain(folder, "killed", KILL_POINTS)]);

    expect(reference.processes.at(-1)!.exitCode, String(reference.processes.at(-1)!.stderr)).toBe(0);
    expect(reference.aText).toBe("a3");
    expect(reference.files).toMatch(/^100644 blob \w+\ttool\.sh$/m);
    expect(reference.files).not.toMatch(/old\.txt/);
    expect(reference.checkpointRefs).toBe("");

    const story = [...killed.processes.map((p) => `${p.signal ?? p.exitCode}: ${String(p.stderr).slice(-1500)}`), killed.kills.join(" | "), JSON.stringify(killed.restored)].join("\n");
    expect([...killed.kills].sort(), story).toEqual(KILL_POINTS.map((point) => point.name).sort());
    expect(killed.processes.at(-1)!.exitCode, story).toBe(0);
    // The same blobs and modes as the uninterrupted run: a.txt has "cmd" and "ran" once, and
    // the edit applied once.
    expect(killed.files, story).toBe(reference.files);
    expect(killed.checkpointRefs).toBe("");

    // Each resume put back what the interrupted turn changed, and only that.
    expect(killed.restored.map((event) => [event.result, [...event.files].sort().join(",")]), story).toEqual([
      // In the command: the checkpoint of turn 0 with a.txt from the journal.
      ["restored", "a.txt,old.txt,ran.log,tool.sh"],
      // After the edit: the checkpoint taken after the command, with a.txt and tool.sh from the journal.
      ["restored", "a.txt"],
      // After the write of b.txt: the same checkpoint, with the journal now holding the edit.
      ["restored", "b.txt"],
    ]);
  }, 240_000);
});
