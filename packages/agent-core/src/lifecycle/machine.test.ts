import { describe, expect, it } from "vitest";
import { isKeenError } from "../errors.js";
import { Phase } from "../events.js";
import { requestPosition } from "../testing/index.js";
import { agentTag } from "./agent-tag.js";
import { commitMessage } from "./commits.js";
import { PHASES, TRANSITIONS } from "./machine.js";
import { Step } from "./step.js";
import { readSnapshot, SNAPSHOT_VERSION, TaskSnapshot } from "./task-state.js";

describe("the lifecycle state machine", () => {
  it("has a function and a row of transitions for every phase, and only known targets", () => {
    for (const phase of Phase.options) {
      expect(PHASES[phase], phase).toBeDefined();
      for (const next of TRANSITIONS[phase]) expect(next === "DONE" || Phase.options.includes(next as Phase)).toBe(true);
    }
  });

  it("types each step: a phase to enter, or DONE with the outcome", () => {
    expect(Step.parse({ next: "PLAN" })).toEqual({ next: "PLAN" });
    expect(Step.parse({ next: "DONE", status: "success", summary: "ok" })).toMatchObject({ next: "DONE" });
    expect(() => Step.parse({ next: "LUNCH" })).toThrow();
    expect(() => Step.parse({ next: "DONE" })).toThrow();
  });
});

describe("requestPosition", () => {
  it("reads agent, phase and turn from the last tag in the agent's messages", () => {
    const request = {
      messages: [
        { role: "user", content: [{ type: "text", text: `overview\n${agentTag("A-B", "EXPLORE")}\nexplore now` }] },
        { role: "assistant", content: [{ type: "tool_use", id: "t1", name: "finish_explore", input: {} }] },
        { role: "user", content: [{ type: "tool_result", tool_use_id: "t1", content: "ok" }, { type: "text", text: `${agentTag("A-B", "COMPLETE")}\nPhase COMPLETE` }] },
        { role: "assistant", content: [{ type: "tool_use", id: "t2", name: "list_files", input: {} }] },
        { role: "user", content: [{ type: "tool_result", tool_use_id: "t2", content: "a.txt" }] },
      ],
    };
    expect(requestPosition(request)).toEqual({ agent: "A-B", phase: "COMPLETE", turn: 1 });
  });

  it("ignores look-alike text that is not on a line of its own and throws for untagged requests", () => {
    const quoted = { messages: [{ role: "user", content: `The user wrote "[keen agent=X phase=PLAN]" in a file` }] };
    expect(() => requestPosition(quoted)).toThrow(/no keen agent tag/);
  });
});

describe("snapshot versions", () => {
  const v1 = {
    version: 1,
    runId: "run_1",
    vision: "Build it",
    nextSeq: 12,
    limits: { maxDepth: 2, maxChildren: 4, maxAgents: 10, maxTurnsPerPhase: 30 },
    maxConcurrency: 2,
    onConflict: "resolve",
    tokensSpent: 100,
    agents: [
      {
        id: "root",
        parentId: null,
        depth: 0,
        branch: "main",
        title: "Build it",
        instructions: "Build it",
        phase: "EXPLORE",
        messages: [{ role: "user", content: "Build it" }],
        children: [],
        merges: {},
        usage: { inputTokens: 1, outputTokens: 2, cacheCreationInputTokens: 0, cacheReadInputTokens: 0 },
      },
    ],
  };

  it("reads a version-1 snapshot and upgrades it to the current version", () => {
    const snapshot = readSnapshot(JSON.parse(JSON.stringify(v1)));
    expect(snapshot.version).toBe(SNAPSHOT_VERSION);
    expect(snapshot.agents[0]!.messages).toEqual(v1.agents[0]!.messages);
    expect(TaskSnapshot.parse(v1).version).toBe(SNAPSHOT_VERSION);
  });

  it("refuses a version it cannot read with a coded error naming the readable ones", () => {
    let caught: unknown;
    try {
      readSnapshot({ ...v1, version: 99 });
    } catch (error) {
      caught = error;
    }
    expect(isKeenError(caught, "snapshot_version")).toBe(true);
    expect(String(caught)).toMatch(/version 99.*reads versions 1, 2, 3/);
  });
});

describe("commitMessage", () => {
  it("never carries NUL or other control characters, whatever the title", () => {
    const message = commitMessage("Add\u0000 login\u001b]0;pwned\u0007\r\nnow", "Done\u0000.", "Agent: A (keen)");
    expect(message).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f]/);
    expect(message.split("\n")[0]).toBe("Add login ]0;pwned now");
    expect(commitMessage("\u0000\u0001")).toBe("keen: work");
  });
});

describe("the price table", () => {
  it("prices every kind of token by model family, and knows when it does not know a model", async () => {
    const { costUsd } = await import("./pricing.js");
    const million = { inputTokens: 1_000_000, outputTokens: 1_000_000, cacheCreationInputTokens: 1_000_000, cacheReadInputTokens: 1_000_000 };
    expect(costUsd("anthropic:claude-sonnet-4-5", million)).toBeCloseTo(3 + 15 + 3.75 + 0.3, 6);
    expect(costUsd("claude-haiku-4-5", million)).toBeCloseTo(1 + 5 + 1.25 + 0.1, 6);
    expect(costUsd("claude-3-5-haiku-latest", { ...million, outputTokens: 0, cacheCreationInputTokens: 0, cacheReadInputTokens: 0 })).toBeCloseTo(0.8, 6);
    expect(costUsd("some-other-model", million)).toBeUndefined();
  });
});
