import { describe, expect, it } from "vitest";
import { KeenEvent, PROTOCOL_VERSION, type KeenEventInput, type Usage } from "@keen/agent-core";
import { LiveTreeView } from "./live-view.js";
import { emptyTree, reduceTree, type TreeState } from "./tree-state.js";
import { formatTokens, renderTree, visibleWidth } from "./tree-view.js";

const usage = (i: number, o: number, w = 0, r = 0): Usage => ({ inputTokens: i, outputTokens: o, cacheCreationInputTokens: w, cacheReadInputTokens: r });

function treeOf(inputs: KeenEventInput[]): TreeState {
  return inputs
    .map((input, seq) => KeenEvent.parse({ ...input, protocol: PROTOCOL_VERSION, runId: "run_1", seq, at: new Date(0).toISOString() }))
    .reduce(reduceTree, emptyTree());
}

const sample: KeenEventInput[] = [
  { type: "run.started", agentId: "root", vision: "Add farewell() and document it", model: "m", repo: "/r", branch: "main" },
  { type: "agent.spawned", agentId: "root", parentId: null, branch: "main", depth: 0, title: "Add farewell() and document it" },
  { type: "agent.phase", agentId: "root", phase: "SUMMON", previous: "PLAN" },
  { type: "agent.spawned", agentId: "A", parentId: "root", branch: "summon-A", depth: 1, title: "Greeting docs" },
  { type: "agent.spawned", agentId: "B", parentId: "root", branch: "summon-B", depth: 1, title: "Farewell function" },
  { type: "agent.spawned", agentId: "A-A", parentId: "A", branch: "summon-A-A", depth: 2, title: "Test greet()" },
  { type: "agent.phase", agentId: "A-A", phase: "COMPLETE", previous: "EXPLORE" },
  { type: "model.usage", agentId: "root", model: "m", requestId: "1", usage: usage(1, 1), agentTotal: usage(1200, 310, 2048, 15_300), stopReason: "tool_use" },
  { type: "model.usage", agentId: "A-A", model: "m", requestId: "2", usage: usage(1, 1), agentTotal: usage(40, 7), stopReason: "tool_use" },
  { type: "tool.started", agentId: "B", toolUseId: "t", name: "write_file", input: {} },
  { type: "agent.completed", agentId: "A-A", status: "success", summary: "ok", usage: usage(40, 7) },
  { type: "git.merge", agentId: "A", branch: "summon-A-A", into: "summon-A", result: "merged", conflictedFiles: [], sha: "abc" },
  { type: "agent.completed", agentId: "A", status: "success", summary: "ok", usage: usage(40, 7) },
  { type: "git.merge", agentId: "root", branch: "summon-A", into: "main", result: "rolled_back", conflictedFiles: ["README.md"], sha: null },
  { type: "validation.result", agentId: "root", command: "node --test", passed: false, exitCode: 1, output: "" },
];

describe("renderTree", () => {
  it("draws one line per agent, indented by depth, with branch, phase, status and tokens", () => {
    const text = renderTree(treeOf(sample), { width: 120, elapsedMs: 2100 });
    expect(text).toBe(
      [
        "keen ▸ Add farewell() and document it · running · 2.1 s",
        "root       Add farewell() and document it  main        SUMMON  running             in 1.2k out 310 cache w 2.0k r 15k",
        "├─ A       Greeting docs                   summon-A    DONE    rolled back         in 0 out 0",
        "│  └─ A-A  Test greet()                    summon-A-A  DONE    completed · merged  in 40 out 7",
        "└─ B       Farewell function               summon-B            running write_file  in 0 out 0",
        "4 agents, 2 running · merges 2, 1 rolled back · tokens in 1.2k out 317 cache w 2.0k r 15k",
        "validation failed (root): node --test",
      ].join("\n"),
    );
  });

  it("never draws a line wider than the terminal, at any width", () => {
    const tree = treeOf(sample);
    for (let width = 20; width <= 160; width += 7) {
      for (const line of renderTree(tree, { width, color: true }).split("\n")) {
        expect(visibleWidth(line), `width ${width}: ${line}`).toBeLessThanOrEqual(width);
      }
    }
    // Narrow: titles give way first, and a cut line ends with an ellipsis.
    const narrow = renderTree(tree, { width: 60 }).split("\n");
    expect(narrow[1]).toMatch(/^root {7}Add far… {2}main/);
    expect(narrow[1]!.endsWith("…")).toBe(true);
    // Middling widths keep 20 columns of title and cut the token counts at the edge instead.
    const middling = renderTree(tree, { width: 90 }).split("\n");
    expect(middling[1]).toMatch(/^root {7}Add farewell\(\) and … {2}main {8}SUMMON {2}running {13}in 1\.2k out 310 …$/);
    // The header keeps the run's status and time in sight; the vision gives way.
    expect(renderTree(tree, { width: 40, elapsedMs: 1500 }).split("\n")[0]).toBe("keen ▸ Add farewell()… · running · 1.5 s");
  });

  it("colours statuses only when asked", () => {
    const tree = treeOf(sample);
    expect(renderTree(tree)).not.toContain("\x1b[");
    const colored = renderTree(tree, { color: true, width: 200 });
    expect(colored).toContain("\x1b[32mcompleted · merged");
    expect(colored).toContain("\x1b[35mrolled back");
    expect(colored.replace(/\x1b\[[0-9;]*m/g, "")).toBe(renderTree(tree, { width: 200 }));
  });

  it("shows the outcome once the run completed", () => {
    const done = treeOf([
      ...sample,
      { type: "run.completed", agentId: "root", status: "failed", summary: "x", usage: usage(10, 20), error: { code: "agent_failed", message: "B failed" }, durationMs: 4500 },
    ]);
    const lines = renderTree(done, { width: 200, elapsedMs: 99_000 }).split("\n");
    expect(lines[0]).toBe("keen ▸ Add farewell() and document it · failed · 4.5 s");
    expect(lines.at(-1)).toBe("agent_failed: B failed");
    expect(lines).toContain("4 agents, 2 running · merges 2, 1 rolled back · tokens in 10 out 20");
  });

  it("formats token counts compactly", () => {
    expect(formatTokens(usage(999, 1000))).toBe("in 999 out 1.0k");
    expect(formatTokens(usage(12_345, 2_500_000, 1, 0))).toBe("in 12k out 2.5M cache w 1 r 0");
  });
});

describe("LiveTreeView", () => {
  function harness(columns = 100) {
    const writes: string[] = [];
    let now = 1_000;
    const view = new LiveTreeView({ write: (s) => writes.push(s), columns: () => columns, intervalMs: 100, now: () => now, color: false });
    return { writes, view, tick: (ms: number) => (now += ms) };
  }

  it("redraws in place: the second frame moves the cursor up over the first and clears below", () => {
    const { writes, view, tick } = harness();
    const tree = treeOf(sample);
    view.update(tree);
    const firstLines = writes[0]!.split("\n").length - 1;
    expect(writes[0]!.startsWith("\x1b[?25l")).toBe(true);
    tick(150);
    view.update(tree);
    expect(writes[1]!.startsWith(`\r\x1b[${firstLines}A\x1b[2K`)).toBe(true);
    expect(writes[1]!.endsWith("\n\x1b[J")).toBe(true);
    view.finish(tree);
    expect(writes.at(-1)).toBe("\x1b[?25h");
  });

  it("coalesces a burst of updates into at most one redraw per interval", async () => {
    const writes: string[] = [];
    const view = new LiveTreeView({ write: (s) => writes.push(s), columns: () => 80, intervalMs: 40, color: false });
    const events = sample.map((input, seq) => KeenEvent.parse({ ...input, protocol: PROTOCOL_VERSION, runId: "run_1", seq, at: new Date(0).toISOString() }));
    let tree = emptyTree();
    for (const event of events) view.update((tree = reduceTree(tree, event)));
    expect(view.frames).toBe(1);
    await new Promise((resolve) => setTimeout(resolve, 80));
    // The pending state was drawn once the interval passed: the latest one, not each step.
    expect(view.frames).toBe(2);
    expect(writes[1]).toContain("validation failed");
    view.finish(tree);
    expect(view.frames).toBe(3);
    view.update(tree);
    await new Promise((resolve) => setTimeout(resolve, 60));
    expect(view.frames).toBe(3);
  });

  it("fits each frame to the current width, one column short of the edge", () => {
    let columns = 120;
    const writes: string[] = [];
    const view = new LiveTreeView({ write: (s) => writes.push(s), columns: () => columns, intervalMs: 0, color: true });
    const tree = treeOf(sample);
    view.update(tree);
    columns = 50;
    view.update(tree);
    const lastFrame = writes[1]!.split("\n").map((line) => line.replace(/^\r?(\x1b\[\d*A)?\x1b\[2K/, ""));
    for (const line of lastFrame) expect(visibleWidth(line)).toBeLessThanOrEqual(49);
  });
});
