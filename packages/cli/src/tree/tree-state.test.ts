import { describe, expect, it } from "vitest";
import { KeenEvent, PROTOCOL_VERSION, SNAPSHOT_VERSION, type KeenEventInput, type TaskSnapshot, type Usage } from "@keen/agent-core";
import { agentsInOrder, displayStatus, emptyTree, reduceTree, treeFromSnapshot, type TreeState } from "./tree-state.js";

const usage = (inputTokens: number, outputTokens: number, cacheCreationInputTokens = 0, cacheReadInputTokens = 0): Usage => ({
  inputTokens,
  outputTokens,
  cacheCreationInputTokens,
  cacheReadInputTokens,
});

/** Stamps events like a run does, and checks each against the real schema. */
function stamp(inputs: KeenEventInput[], firstSeq = 0): KeenEvent[] {
  return inputs.map((input, i) => KeenEvent.parse({ ...input, protocol: PROTOCOL_VERSION, runId: "run_1", seq: firstSeq + i, at: new Date(0).toISOString() }));
}

const spawn = (agentId: string, parentId: string | null, branch: string, depth: number, title: string): KeenEventInput => ({
  type: "agent.spawned",
  agentId,
  parentId,
  branch,
  depth,
  title,
});
const phase = (agentId: string, to: "EXPLORE" | "PLAN" | "SUMMON" | "COMPLETE", previous: "EXPLORE" | "PLAN" | "SUMMON" | null = null): KeenEventInput => ({
  type: "agent.phase",
  agentId,
  phase: to,
  previous,
});

const threeLevelRun: KeenEventInput[] = [
  { type: "run.started", agentId: "root", vision: "Build it\nwith care", model: "m", repo: "/r", branch: "main" },
  spawn("root", null, "main", 0, "Build it"),
  phase("root", "EXPLORE"),
  phase("root", "PLAN", "EXPLORE"),
  phase("root", "SUMMON", "PLAN"),
  spawn("A", "root", "summon-A", 1, "Docs"),
  spawn("B", "root", "summon-B", 1, "Code"),
  spawn("A-A", "A", "summon-A-A", 2, "Guide"),
  { type: "tool.started", agentId: "B", toolUseId: "t1", name: "write_file", input: { path: "x" } },
  { type: "model.usage", agentId: "B", model: "m", requestId: "q1", usage: usage(10, 5), agentTotal: usage(30, 12, 4, 100), stopReason: "tool_use" },
];

function apply(events: KeenEvent[], state: TreeState = emptyTree()): TreeState {
  return events.reduce(reduceTree, state);
}

describe("reduceTree", () => {
  it("builds the tree from spawn events, children in spawn order under their parent", () => {
    const tree = apply(stamp(threeLevelRun));
    expect(tree.runId).toBe("run_1");
    expect(tree.vision).toBe("Build it\nwith care");
    expect(tree.roots).toEqual(["root"]);
    expect(agentsInOrder(tree).map((a) => [a.id, a.depth, a.branch])).toEqual([
      ["root", 0, "main"],
      ["A", 1, "summon-A"],
      ["A-A", 2, "summon-A-A"],
      ["B", 1, "summon-B"],
    ]);
    expect(tree.agents.root!.phase).toBe("SUMMON");
    expect(tree.agents.B!.activeTool).toBe("write_file");
    // The agent's running total, not the single request.
    expect(tree.agents.B!.usage).toEqual(usage(30, 12, 4, 100));
    expect(agentsInOrder(tree).map(displayStatus)).toEqual(["running", "running", "running", "running"]);
  });

  it("marks completion, merges, rollbacks and the run's end", () => {
    const events = stamp([
      ...threeLevelRun,
      { type: "tool.completed", agentId: "B", toolUseId: "t1", name: "write_file", isError: false, output: "ok", durationMs: 1 },
      { type: "agent.completed", agentId: "A-A", status: "success", summary: "ok", usage: usage(1, 1) },
      { type: "git.merge", agentId: "A", branch: "summon-A-A", into: "summon-A", result: "merged", conflictedFiles: [], sha: "abc" },
      { type: "agent.completed", agentId: "A", status: "success", summary: "ok", usage: usage(1, 1) },
      { type: "agent.completed", agentId: "B", status: "failed", summary: "no", usage: usage(1, 1) },
      { type: "git.merge", agentId: "root", branch: "summon-A", into: "main", result: "rolled_back", conflictedFiles: ["a.txt"], sha: null },
      { type: "validation.result", agentId: "root", command: "npm test", passed: false, exitCode: 1, output: "boom" },
      { type: "limit.reached", agentId: "root", limit: "maxChildren", value: 2, detail: "3 planned" },
      { type: "agent.completed", agentId: "root", status: "failed", summary: "partly", usage: usage(9, 9) },
      {
        type: "run.completed",
        agentId: "root",
        status: "failed",
        summary: "partly",
        usage: usage(9, 9),
        error: { code: "agent_failed", message: "partly" },
        durationMs: 1234,
      },
    ]);
    const tree = apply(events);
    expect(tree.agents.B!.activeTool).toBeUndefined();
    expect(Object.fromEntries(agentsInOrder(tree).map((a) => [a.id, displayStatus(a)]))).toEqual({
      root: "failed",
      A: "rolled back",
      "A-A": "completed",
      B: "failed",
    });
    expect(tree.agents["A-A"]!.merge).toBe("merged");
    expect(tree.agents.A!.conflictedFiles).toEqual(["a.txt"]);
    expect(tree.agents.A!.phase).toBe("DONE");
    expect(tree.lastValidation).toEqual({ agentId: "root", command: "npm test", passed: false });
    expect(tree.limits).toEqual(["maxChildren: 3 planned"]);
    expect(tree).toMatchObject({ status: "failed", durationMs: 1234, error: { code: "agent_failed" }, usage: usage(9, 9) });
  });

  it("never changes the state it is given, and ignores replayed events", () => {
    const events = stamp(threeLevelRun);
    const before = apply(events.slice(0, 6));
    const frozen = structuredClone(before);
    const after = reduceTree(before, events[6]!);
    expect(before).toEqual(frozen);
    expect(after).not.toBe(before);
    // Seen already (same or lower seq): the state object comes back unchanged.
    expect(reduceTree(after, events[6]!)).toBe(after);
    expect(reduceTree(after, events[2]!)).toBe(after);
  });

  it("ignores events about agents it has not seen and events the view does not use", () => {
    const events = stamp([
      { type: "agent.phase", agentId: "ghost", phase: "PLAN", previous: "EXPLORE" },
      { type: "model.text", agentId: "root", text: "hello" },
    ]);
    const tree = apply(events);
    expect(tree.agents).toEqual({});
    expect(tree.lastSeq).toBe(1);
  });
});

describe("treeFromSnapshot", () => {
  it("starts a resumed run's view from the saved agents, then applies new events on top", () => {
    const agent = (id: string, parentId: string | null, depth: number, branch: string, extra: Partial<TaskSnapshot["agents"][number]> = {}) => ({
      id,
      parentId,
      depth,
      branch,
      title: `Task ${id}`,
      instructions: "do",
      phase: "COMPLETE" as const,
      messages: [],
      children: [],
      merges: {},
      usage: usage(5, 1),
      ...extra,
    });
    const snapshot: TaskSnapshot = {
      version: SNAPSHOT_VERSION,
      runId: "run_9",
      vision: "Build it",
      nextSeq: 40,
      limits: { maxDepth: 2, maxChildren: 4, maxAgents: 10, maxTurnsPerPhase: 30 },
      maxConcurrency: 2,
      onConflict: "resolve",
      tokensSpent: 18,
      agents: [
        agent("root", null, 0, "main", { phase: "SUMMON", children: ["A", "B"], merges: { A: { status: "merged" }, B: { status: "pending" } } }),
        agent("A", "root", 1, "summon-A", { phase: "DONE", status: "success" }),
        agent("B", "root", 1, "summon-B"),
      ],
    };
    let tree = treeFromSnapshot(snapshot);
    expect(agentsInOrder(tree).map((a) => [a.id, a.phase, displayStatus(a), a.merge])).toEqual([
      ["root", "SUMMON", "running", undefined],
      ["A", "DONE", "completed", "merged"],
      ["B", "COMPLETE", "running", undefined],
    ]);
    tree = apply(stamp([{ type: "agent.completed", agentId: "B", status: "success", summary: "ok", usage: usage(1, 1) }], 40), tree);
    expect(displayStatus(tree.agents.B!)).toBe("completed");
    // Events from before the snapshot are not applied twice.
    expect(apply(stamp([{ type: "agent.completed", agentId: "root", status: "failed", summary: "x", usage: usage(1, 1) }], 39), tree)).toBe(tree);
  });
});
