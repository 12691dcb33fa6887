import { mkdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import * as z from "zod";
import type { KeenEvent } from "../events.js";
import { anthropic } from "../model/anthropic.js";
import { EventStream } from "../run/event-stream.js";
import { reply, startMessagesServer, type ScriptedReply } from "../testing/index.js";
import { defineTool } from "../tools/define-tool.js";
import { editFileTool, readFileTool, writeFileTool } from "../tools/index.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "../workspace/test-repo.js";
import type { Workspace } from "../workspace/workspace.js";
import { SNAPSHOT_VERSION, type AgentState, type TaskSnapshot } from "./task-state.js";
import { converse } from "./converse.js";
import { startTask } from "./start-task.js";
import { done, explore, phaseOf, plan, scenarioPolicy, write } from "./testing/scenario.js";
import { AgentTree, type EngineSettings } from "./tree.js";
import { checkpointKey, checkpointTurn, countTurn, dropRunCheckpoints, dropTurnCheckpoint, JOURNAL_MAX_FILES, restoreInterruptedTurn } from "./turn-checkpoints.js";

/** A tree holding one agent in COMPLETE, and the events it emits. */
function treeWith(workspace: Workspace, runId = "run_1", settings: Partial<EngineSettings> = {}): { tree: AgentTree; agent: AgentState; events: KeenEvent[] } {
  const agent: AgentState = {
    id: "A",
    parentId: "root",
    depth: 1,
    branch: "summon-A",
    title: "Alpha",
    instructions: "Do it",
    phase: "COMPLETE",
    // A checkpoint is only ever saved during a turn, so the conversation has begun.
    messages: [{ role: "user", content: "Do it" }],
    children: [],
    merges: {},
    usage: { inputTokens: 0, outputTokens: 0, cacheCreationInputTokens: 0, cacheReadInputTokens: 0 },
  };
  const state: TaskSnapshot = {
    version: SNAPSHOT_VERSION,
    runId,
    vision: "v",
    nextSeq: 0,
    limits: { maxDepth: 2, maxChildren: 4, maxAgents: 10, maxTurnsPerPhase: 30 },
    maxConcurrency: 1,
    onConflict: "rollback",
    tokensSpent: 0,
    agents: [agent],
  };
  return treeOf(state, workspace, settings);
}

function treeOf(state: TaskSnapshot, workspace: Workspace, settings: Partial<EngineSettings> = {}): { tree: AgentTree; agent: AgentState; events: KeenEvent[] } {
  const stream = new EventStream(state.runId);
  const events: KeenEvent[] = [];
  stream.on("*", (event) => events.push(event));
  const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: "http://127.0.0.1:9" });
  const tree = new AgentTree(state, { workspace, model, ...settings }, stream, new AbortController(), "");
  return { tree, agent: tree.agents.get("A")!, events };
}

async function forked(): Promise<{ dir: string; checkout: LocalWorkspace; child: LocalWorkspace }> {
  const dir = await createTestRepo({ "README.md": "# test\n", "lib.txt": "keep\nend\n" });
  const checkout = await LocalWorkspace.open(dir, { sandbox: false });
  return { dir, checkout, child: await checkout.fork("summon-A") };
}

describe("turn checkpoints", () => {
  it("puts the files back before repeating a turn the snapshot never recorded, and only then", async () => {
    const { child } = await forked();
    const { tree, agent, events } = treeWith(child);
    countTurn(agent); // one turn done (say, EXPLORE)
    await checkpointTurn(tree, agent, child);
    // The turn writes, then the process dies before its snapshot: agent.turns is still 1.
    await child.writeFile("lib.txt", "keep\nalpha()\nend\n");
    await child.writeFile("new.txt", "x\n");
    await restoreInterruptedTurn(tree, agent, child);
    expect(await child.readFile("lib.txt")).toBe("keep\nend\n");
    expect(await child.exists("new.txt")).toBe(false);
    expect(events.filter((e) => e.type === "turn.restored")).toEqual([
      expect.objectContaining({ agentId: "A", branch: "summon-A", turn: 1, result: "restored", files: ["lib.txt", "new.txt"] }),
    ]);

    // Once the turn is recorded as done, its effects are the agent's work: nothing is put back.
    await child.writeFile("lib.txt", "keep\nalpha()\nend\n");
    countTurn(agent);
    await restoreInterruptedTurn(tree, agent, child);
    expect(await child.readFile("lib.txt")).toBe("keep\nalpha()\nend\n");
    expect(events.filter((e) => e.type === "turn.restored")).toHaveLength(1);
  });

  it("never restores a checkout keen did not create: the user's files stay and an event says so", async () => {
    const dir = await createTestRepo({ "README.md": "# test\n", "lib.txt": "keep\nend\n" });
    const checkout = await LocalWorkspace.open(dir, { sandbox: false });
    const { tree, agent, events } = treeWith(checkout);
    await checkpointTurn(tree, agent, checkout);
    await writeFile(join(dir, "lib.txt"), "the user's edit\n");
    await restoreInterruptedTurn(tree, agent, checkout);
    expect(await readFile(join(dir, "lib.txt"), "utf8")).toBe("the user's edit\n");
    expect(events).toEqual([expect.objectContaining({ type: "turn.restored", result: "skipped", files: [], detail: expect.stringContaining("keen did not create") })]);
    // The checkpoint never touched the user's index or HEAD.
    expect((await execa("git", ["status", "--porcelain"], { cwd: dir })).stdout).toBe(" M lib.txt");
  });

  it("leaves the files alone when the snapshot is older than the checkpoint", async () => {
    const { child } = await forked();
    const { tree, agent, events } = treeWith(child);
    countTurn(agent);
    await checkpointTurn(tree, agent, child);
    agent.turns = 0; // a snapshot that lags behind (the host failed to store the newer one)
    await child.writeFile("lib.txt", "changed\n");
    await restoreInterruptedTurn(tree, agent, child);
    expect(await child.readFile("lib.txt")).toBe("changed\n");
    expect(events).toEqual([expect.objectContaining({ type: "turn.restored", result: "skipped" })]);
  });

  it("keys checkpoints by run and agent as valid refs, and drops every one of a run", async () => {
    expect(checkpointKey("run_1", "A-B")).toBe("run_1/A-B");
    expect(checkpointKey("my run/..", "A")).toMatch(/^my_run___-[0-9a-f]{8}\/A$/);
    const { dir, checkout, child } = await forked();
    const { tree, agent } = treeWith(child, "run with spaces");
    await checkpointTurn(tree, agent, child);
    const refs = async () => (await execa("git", ["for-each-ref", "--format=%(refname)", "refs/keen/checkpoints"], { cwd: dir })).stdout;
    expect(await refs()).toMatch(/^refs\/keen\/checkpoints\/run_with_spaces-[0-9a-f]{8}\/A$/);
    // Never a branch, and the branch's own head did not move.
    expect((await execa("git", ["branch", "--format=%(refname:short)"], { cwd: dir })).stdout.split("\n").sort()).toEqual(["main", "summon-A"]);
    await dropRunCheckpoints(tree, checkout);
    expect(await refs()).toBe("");
  });

  it("asks git nothing for a conversation not begun, and drops each checkpoint once at the run's end", async () => {
    const { dir, checkout, child } = await forked();
    const { tree, agent } = treeWith(child);
    const drops: string[] = [];
    const reads: string[] = [];
    // The real workspace, with its checkpoint calls noted.
    const noted = Object.assign(Object.create(child) as LocalWorkspace, {
      dropCheckpoint: (key: string) => (drops.push(key), child.dropCheckpoint(key)),
      readCheckpoint: (key: string) => (reads.push(key), child.readCheckpoint(key)),
    });
    const fresh = treeWith(child).agent;
    fresh.messages = [];
    await restoreInterruptedTurn(tree, fresh, noted);
    expect(reads).toEqual([]);

    await checkpointTurn(tree, agent, child);
    await dropTurnCheckpoint(tree, agent, noted); // the agent's work was committed
    await dropRunCheckpoints(tree, noted); // the run ends: nothing left to drop for A
    expect(drops).toEqual([checkpointKey(tree.state.runId, "A")]);
    expect((await execa("git", ["for-each-ref", "refs/keen/checkpoints"], { cwd: dir })).stdout).toBe("");

    // A resumed run (a new tree) drops what the stopped process left, even if it was dropped before.
    await checkpointTurn(tree, agent, child);
    const resumed = treeOf(structuredClone(tree.state), checkout);
    await dropRunCheckpoints(resumed.tree, noted);
    expect(drops).toHaveLength(2);
    expect((await execa("git", ["for-each-ref", "refs/keen/checkpoints"], { cwd: dir })).stdout).toBe("");
  });

  it("checkpoints and restores mid-merge, without writing the worktree's own index", async () => {
    const { dir, child } = await forked();
    await execa("git", ["checkout", "-q", "-b", "other"], { cwd: dir });
    await writeFile(join(dir, "lib.txt"), "other\nend\n");
    await execa("git", ["commit", "-qam", "other"], { cwd: dir, env: { GIT_AUTHOR_NAME: "t", GIT_AUTHOR_EMAIL: "t@x", GIT_COMMITTER_NAME: "t", GIT_COMMITTER_EMAIL: "t@x" } });
    await child.writeFile("lib.txt", "mine\nend\n");
    await child.commit("mine", { author: { name: "t", email: "t@x" } });
    expect(await child.merge("other", "merge other")).toMatchObject({ status: "conflict" });
    const indexPath = (await execa("git", ["rev-parse", "--path-format=absolute", "--git-path", "index"], { cwd: child.root })).stdout;
    const before = await readFile(indexPath);
    const { tree, agent } = treeWith(child);
    await checkpointTurn(tree, agent, child);
    expect(await readFile(indexPath)).toEqual(before);
    const conflicted = await child.readFile("lib.txt");
    await child.writeFile("lib.txt", "resolved\n");
    await restoreInterruptedTurn(tree, agent, child);
    expect(await child.readFile("lib.txt")).toBe(conflicted);
  });

  it("saves a turn's checkpoint while its request is in flight and before its tools run; after a read-only or journaled turn, saves none and the snapshot names the one that, with the journal, holds the files", async () => {
    const { dir, child } = await forked();
    const ref = `refs/keen/checkpoints/${checkpointKey("run_1", "A")}`;
    const label = async () => (await execa("git", ["log", "-1", "--format=%s", ref], { cwd: dir, reject: false })).stdout;
    const files = async () => (await execa("git", ["ls-tree", "-r", "--name-only", ref], { cwd: dir })).stdout.split("\n");
    // The server answers turn N only once the checkpoint of turn N is saved: it is saved while
    // the request is in flight, not after the response.
    const notSavedInFlight: number[] = [];
    const savedBy = async (turn: number) => {
      for (let i = 0; i < 400; i++) {
        if ((await label()) === `turn ${turn}`) return;
        await delay(25);
      }
      notSavedInFlight.push(turn);
    };
    const script: Array<[turn: number | null, answer: ScriptedReply]> = [
      [0, reply.toolUse("write_file", { path: "a.txt", content: "1\n" })],
      // Turn 0 wrote only through write_file: its file is in the journal, and no checkpoint is saved.
      [null, reply.toolUse("record", { name: "b.txt" })],
      [2, reply.toolUse("read_file", { path: "a.txt" })],
      [null, reply.toolUse("record", { name: "c.txt" })],
      [null, reply.text("Done.")],
    ];
    const server = await startMessagesServer({
      policy: async (_request, { index }) => {
        const [turn, answer] = script[index]!;
        if (turn !== null) await savedBy(turn);
        return answer;
      },
    });
    // What the checkpoint holds when a tool that writes starts.
    const seen: Array<{ label: string; files: string[] }> = [];
    const record = defineTool({
      name: "record",
      description: "Records the checkpoint, then writes a file",
      input: z.object({ name: z.string() }),
      execute: async ({ name }, { workspace }) => {
        seen.push({ label: await label(), files: await files() });
        await workspace.writeFile(name, "x\n");
        return "recorded";
      },
    });
    const snapshots: TaskSnapshot[] = [];
    try {
      const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
      const { tree, agent } = treeWith(child, "run_1", { model, onSnapshot: (snapshot) => void snapshots.push(structuredClone(snapshot)) });
      await converse(tree, agent, child, { tools: [writeFileTool, readFileTool, record] });
      expect(agent.turns).toBe(5);
    } finally {
      await server.close();
    }
    expect(notSavedInFlight).toEqual([]);
    expect(seen).toEqual([
      // Turn 1 starts from turn 0's write, which the journal holds over the checkpoint of turn 0.
      { label: "turn 0", files: ["README.md", "lib.txt"] },
      // Turn 1's tool wrote outside the journal: turn 2 saved a checkpoint. It only read: no
      // checkpoint for turn 3; the one of turn 2 holds its files.
      { label: "turn 2", files: ["README.md", "a.txt", "b.txt", "lib.txt"] },
    ]);
    const agentIn = (snapshot: TaskSnapshot) => snapshot.agents.find((a) => a.id === "A")!;
    expect(snapshots.map((snapshot) => [agentIn(snapshot).turns, agentIn(snapshot).unchangedSince, agentIn(snapshot).journal?.map((file) => file.path)])).toEqual([
      [1, 0, ["a.txt"]],
      [2, undefined, undefined],
      [3, 2, undefined],
      [4, undefined, undefined],
      [5, undefined, undefined],
    ]);
    expect(agentIn(snapshots[0]!).journal).toEqual([{ path: "a.txt", mode: expect.any(Number), text: "1\n" }]);

    // A crash in turn 3 after its write, before its snapshot: resumed from the snapshot before,
    // the files go back to the checkpoint of turn 2.
    const { tree, agent, events } = treeOf(snapshots[2]!, child);
    await restoreInterruptedTurn(tree, agent, child);
    expect(events).toEqual([expect.objectContaining({ type: "turn.restored", turn: 3, result: "restored", files: ["c.txt"] })]);
    expect(await child.exists("c.txt")).toBe(false);
    expect(await child.readFile("b.txt")).toBe("x\n");
  });

  it("journals the files of turns that wrote only through keen's file tools, one entry per path, and ends the journal at a write through a symbolic link or past its bounds", async () => {
    const { child } = await forked();
    await mkdir(join(child.root, "real"));
    await symlink("real", join(child.root, "link"));
    const many = Array.from({ length: JOURNAL_MAX_FILES + 1 }, (_, i): [string, unknown] => ["write_file", { path: `many/${i}.txt`, content: `${i}\n` }]);
    const script: ScriptedReply[] = [
      reply.toolUse("write_file", { path: "a.txt", content: "1\n" }),
      reply.toolUses(["write_file", { path: "b.txt", content: "b\n" }], ["edit_file", { path: "a.txt", old_string: "1\n", new_string: "2\n" }]),
      reply.toolUse("write_file", { path: "link/c.txt", content: "c\n" }),
      reply.toolUses(...many),
      reply.text("Done."),
    ];
    const server = await startMessagesServer({ policy: (_request, { index }) => script[index]! });
    const snapshots: TaskSnapshot[] = [];
    try {
      const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
      const { tree, agent } = treeWith(child, "run_1", { model, onSnapshot: (snapshot) => void snapshots.push(structuredClone(snapshot)) });
      await converse(tree, agent, child, { tools: [writeFileTool, editFileTool, readFileTool] });
    } finally {
      await server.close();
    }
    const agentIn = (snapshot: TaskSnapshot) => snapshot.agents.find((a) => a.id === "A")!;
    expect(snapshots.slice(0, 4).map((snapshot) => [agentIn(snapshot).turns, agentIn(snapshot).unchangedSince, agentIn(snapshot).journal?.map((file) => [file.path, file.text])])).toEqual([
      [1, 0, [["a.txt", "1\n"]]],
      [2, 0, [["b.txt", "b\n"], ["a.txt", "2\n"]]],
      // Through a symbolic link: the next turn saves a checkpoint (of turn 3), and the journal starts again.
      [3, undefined, undefined],
      // Past JOURNAL_MAX_FILES: the same.
      [4, undefined, undefined],
    ]);
  });

  it("in a tree with merges, every checkpoint saved during a request holds the agent's files as they were when the request was sent", async () => {
    // The invariant the checkpoint relies on: nothing writes an agent's worktree while its model
    // request is in flight, children's merges into their parent included. Each COMPLETE request is
    // held until that agent's new checkpoint is saved, and the checkpoint is compared with the
    // files as the request found them.
    const dir = await createTestRepo({ "README.md": "# app\n", "lib.txt": "keep\n" });
    const runId = "run_6c6c6c6c-0000-4000-8000-000000000000";
    const git = async (cwd: string, args: string[], env: Record<string, string> = {}) =>
      (await execa("git", args, { cwd, env: { ...TEST_GIT_IDENTITY, ...env }, reject: false })).stdout.trim();
    const worktreeOf = async (agent: string) => {
      const entries = (await git(dir, ["worktree", "list", "--porcelain"])).split("\n\n").map((entry) => entry.split("\n"));
      const branch = (lines: string[]) => lines.find((line) => line.startsWith("branch "))?.slice("branch refs/heads/".length) ?? "";
      const entry = entries.find((lines) => (agent === "root" ? branch(lines) === "keen/6c6c6c6c" : branch(lines).endsWith(`/summon-${agent}`)))!;
      return entry[0]!.slice("worktree ".length);
    };
    // The tree of a worktree's files, staged into a scratch index.
    const filesTree = async (worktree: string) => {
      const env = { GIT_INDEX_FILE: join(tmpdir(), `keen-test-index-${Math.random().toString(16).slice(2)}`) };
      await git(worktree, ["read-tree", "HEAD"], env);
      await git(worktree, ["add", "-A"], env);
      const tree = await git(worktree, ["write-tree"], env);
      await rm(env.GIT_INDEX_FILE, { force: true });
      return tree;
    };
    const checked: string[] = [];
    const differing: string[] = [];
    let latest: TaskSnapshot | undefined;
    const server = await startMessagesServer({
      policy: scenarioPolicy(
        {
          root: {
            finish_explore: [explore("PLAN")],
            submit_plan: [plan([{ title: "Alpha" }, { title: "Beta" }])],
            complete_task: [write("root.txt", "r\n"), done("Merged.")],
          },
          A: { complete_task: [write("a.txt", "a\n"), reply.toolUse("run_command", { command: "printf 'keep\\nalpha\\n' > lib.txt" }), write("a.txt", "a2\n"), done("A done.")] },
          B: { complete_task: [write("b.txt", "b\n"), done("B done.")] },
        },
        {
          onRequest: async (agent, phase, turn) => {
            if (phase !== "complete_task") return;
            const ref = `refs/keen/checkpoints/${checkpointKey(runId, agent)}`;
            const sent = await filesTree(await worktreeOf(agent));
            // Checkpoints are saved by a conversation's first turn and the turn after a command;
            // after a write_file or a read-only turn, the last one stays (the journal holds the rest).
            const saving = turn === 0 || (agent === "A" && turn === 2);
            const savedAt = agent === "A" && turn >= 2 ? 2 : 0;
            // The agent's turns before COMPLETE: root explored and planned, the children explored.
            const checkpointTurn = (agent === "root" ? 2 : 1) + savedAt;
            // A child's first checkpoint is its fork's commit, named in a snapshot instead of a ref.
            const kept = () => latest?.agents.find((state) => state.id === agent)?.checkpointCommit;
            const savedTree = async () => {
              if ((await git(dir, ["log", "-1", "--format=%s", ref])) === `turn ${checkpointTurn}`) return git(dir, ["rev-parse", `${ref}^{tree}`]);
              const commit = kept();
              return commit?.turn === checkpointTurn ? git(dir, ["rev-parse", `${commit.commit}^{tree}`]) : undefined;
            };
            let saved: string | undefined;
            for (let i = 0; i < 400 && saved === undefined; i++) {
              saved = await savedTree();
              if (saved === undefined) await delay(25);
            }
            checked.push(`${agent} ${turn}`);
            if (saved === undefined || (saving && saved !== sent)) differing.push(`${agent} ${turn}`);
            if (agent !== "root" && savedAt === 0 && kept()?.turn !== checkpointTurn) differing.push(`${agent} ${turn}: no commit kept`);
          },
        },
      ),
    });
    try {
      const workspace = await LocalWorkspace.open(dir, { sandbox: false });
      const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
      const onSnapshot = (snapshot: TaskSnapshot) => void (latest = snapshot);
      const result = await startTask({ vision: "Build both parts", workspace, model, limits: { maxDepth: 1 }, maxConcurrency: 2, runId, onSnapshot }).result;
      expect(result.status).toBe("success");
    } finally {
      await server.close();
    }
    expect(checked.sort()).toEqual(["A 0", "A 1", "A 2", "A 3", "B 0", "B 1", "root 0", "root 1"]);
    expect(differing).toEqual([]);
    expect((await git(dir, ["ls-tree", "-r", "--name-only", "keen/6c6c6c6c"])).split("\n")).toEqual(["README.md", "a.txt", "b.txt", "lib.txt", "root.txt"]);
  });
});

describe("the first checkpoint of a worktree the run checked out", () => {
  it("looks at the files once a validation ran: what the check wrote is in the next checkpoint", async () => {
    const dir = await createTestRepo({ "README.md": "# r\n" });
    const runId = "run_7a7a7a7a-0000-4000-8000-000000000000";
    const ref = `refs/keen/checkpoints/${checkpointKey(runId, "root")}`;
    let seen: string | undefined;
    // COMPLETE: a read-only finish (the check fails and writes built.txt), then a write and a finish.
    const complete = [done("first"), write("notes.md", "n\n"), done("second")];
    let completeRequests = 0;
    const others = scenarioPolicy({});
    const server = await startMessagesServer({
      policy: async (request, context) => {
        if (phaseOf(request) !== "complete_task") return others(request, context);
        const index = completeRequests++;
        if (index === 2) seen = (await execa("git", ["ls-tree", "-r", "--name-only", ref], { cwd: dir })).stdout;
        return complete[index] ?? done();
      },
    });
    try {
      const workspace = await LocalWorkspace.open(dir, { sandbox: false });
      const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
      const validation = { command: "test -e notes.md; found=$?; echo built > built.txt; exit $found" };
      const result = await startTask({ vision: "Write notes", workspace, model, runId, validation }).result;
      expect(result.status, result.summary).toBe("success");
    } finally {
      await server.close();
    }
    // The write turn's checkpoint holds the files it started from, built.txt included (not the fork's commit).
    expect(seen?.split("\n")).toEqual(["README.md", "built.txt"]);
  });
});

describe("the first checkpoint kept as the fresh worktree's commit", () => {
  const refsIn = async (dir: string) => (await execa("git", ["for-each-ref", "--format=%(refname) %(subject)", "refs/keen/checkpoints"], { cwd: dir })).stdout;

  it("saves no ref, names the commit in a snapshot handed over before the turn goes on, and a resume puts its files back", async () => {
    const { dir, child } = await forked();
    const head = await child.head();
    const snapshots: TaskSnapshot[] = [];
    const { tree, agent } = treeWith(child, "run_1", { onSnapshot: (snapshot) => void snapshots.push(structuredClone(snapshot)) });
    // A ref left under the key by an earlier run with the same id: it must not win over the commit.
    await child.writeFile("stale.txt", "x\n");
    await child.checkpoint(checkpointKey("run_1", "A"), "turn 1");
    await rm(join(child.root, "stale.txt"));
    countTurn(agent); // one read-only turn done (EXPLORE)
    tree.pristine.set("A", head);
    await checkpointTurn(tree, agent, child);
    expect(await refsIn(dir)).toBe("");
    expect(agent.checkpointCommit).toEqual({ turn: 1, commit: head });
    const beforeTools = snapshots.at(-1)!;
    expect(beforeTools.agents[0]!.checkpointCommit).toEqual({ turn: 1, commit: head });
    expect(beforeTools.agents[0]!.turns).toBe(1);

    // The turn's tools write half-way, then the process dies: the resume starts from that snapshot.
    await child.writeFile("lib.txt", "keep\nhalf\n");
    await child.writeFile("src/new.ts", "export {};\n");
    await rm(join(child.root, "README.md"));
    const resumed = treeOf(structuredClone(beforeTools), child);
    await restoreInterruptedTurn(resumed.tree, resumed.agent, child);
    expect(resumed.events).toEqual([expect.objectContaining({ type: "turn.restored", turn: 1, result: "restored", files: ["README.md", "lib.txt", "src/new.ts"] })]);
    expect(await child.readFile("lib.txt")).toBe("keep\nend\n");
    expect(await child.readFile("README.md")).toBe("# test\n");
    expect(await child.exists("src")).toBe(false);
    expect(await child.head()).toBe(head);
  });

  it("is superseded by a ref saved later, even when the last snapshot still names it", async () => {
    const { dir, child } = await forked();
    const head = await child.head();
    const snapshots: TaskSnapshot[] = [];
    const { tree, agent } = treeWith(child, "run_1", { onSnapshot: (snapshot) => void snapshots.push(structuredClone(snapshot)) });
    tree.pristine.set("A", head);
    await checkpointTurn(tree, agent, child);
    // Turn 0 ran a command that wrote; its snapshot still names the commit as turn 0's checkpoint.
    await child.writeFile("lib.txt", "turn 0 wrote\n");
    countTurn(agent);
    await tree.snapshot();
    const afterTurn0 = snapshots.at(-1)!;
    expect(afterTurn0.agents[0]!.checkpointCommit).toEqual({ turn: 0, commit: head });
    // Turn 1 saves a ref (the files are no longer the commit's), then dies half-way.
    await checkpointTurn(tree, agent, child);
    expect(await refsIn(dir)).toMatch(/ turn 1$/);
    expect(agent.checkpointCommit).toBeUndefined();
    await child.writeFile("lib.txt", "turn 1 wrote\n");
    const resumed = treeOf(structuredClone(afterTurn0), child);
    await restoreInterruptedTurn(resumed.tree, resumed.agent, child);
    expect(await child.readFile("lib.txt")).toBe("turn 0 wrote\n");
    expect(resumed.events).toEqual([expect.objectContaining({ type: "turn.restored", turn: 1, result: "restored", files: ["lib.txt"] })]);
  });

  it("never puts back the commit's files in a checkout keen did not create", async () => {
    const dir = await createTestRepo({ "README.md": "# test\n", "lib.txt": "keep\nend\n" });
    const checkout = await LocalWorkspace.open(dir, { sandbox: false });
    const { tree, agent, events } = treeWith(checkout);
    agent.checkpointCommit = { turn: 0, commit: await checkout.head() };
    await writeFile(join(dir, "lib.txt"), "the user's edit\n");
    await writeFile(join(dir, "mine.txt"), "the user's file\n");
    await restoreInterruptedTurn(tree, agent, checkout);
    expect(await readFile(join(dir, "lib.txt"), "utf8")).toBe("the user's edit\n");
    expect(await readFile(join(dir, "mine.txt"), "utf8")).toBe("the user's file\n");
    expect(events).toEqual([expect.objectContaining({ type: "turn.restored", result: "skipped", files: [], detail: expect.stringContaining("keen did not create") })]);
    expect((await execa("git", ["status", "--porcelain"], { cwd: dir })).stdout).toBe(" M lib.txt\n?? mine.txt");
  });
});
