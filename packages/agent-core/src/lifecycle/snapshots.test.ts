import { afterEach, describe, expect, it, vi } from "vitest";
import { anthropic } from "../model/anthropic.js";
import type { Message } from "../model/model.js";
import { reply, startMessagesServer, type MessagesServer } from "../testing/index.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo } from "../workspace/test-repo.js";
import { encodeSnapshot, serializeSnapshot, shareSnapshot } from "./snapshots.js";
import { resumeTask, startTask } from "./start-task.js";
import { readSnapshot, type AgentState, type TaskSnapshot } from "./task-state.js";
import { done, explore, scenarioPolicy, write } from "./testing/scenario.js";
import { agentFixture, snapshotFixture } from "./testing/snapshot-fixture.js";

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

/** Explore with two reads, then complete with writes (a journal), a read and a reminder (a text-only reply). */
const SCENARIO = {
  root: {
    finish_explore: [reply.toolUse("read_file", { path: "README.md" }), reply.toolUse("list_files", {}), explore("COMPLETE")],
    complete_task: [write("notes/a.md", "first\n"), write("notes/b.md", "second\n"), reply.text("Thinking it over."), reply.toolUse("read_file", { path: "notes/a.md" }), done("Wrote the notes.")],
  },
};

async function setup() {
  server = await startMessagesServer({ policy: scenarioPolicy(SCENARIO) });
  const dir = await createTestRepo({ "README.md": "# app\n", "src/index.ts": "export {};\n" });
  const workspace = await LocalWorkspace.open(dir, { sandbox: false });
  const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { baseDelayMs: 5, maxRetries: 1 } });
  return { dir, workspace, model };
}

describe("snapshots handed to onSnapshot", () => {
  it("read as they did when handed over while the run goes on, and serializeSnapshot writes each as its JSON", async () => {
    const { workspace, model } = await setup();
    const received: Array<{ snapshot: TaskSnapshot; json: string }> = [];
    const result = await startTask({
      vision: "Write two notes",
      workspace,
      model,
      limits: { maxDepth: 0 },
      onSnapshot: (snapshot) => void received.push({ snapshot, json: JSON.stringify(snapshot) }),
    }).result;
    expect(result.status).toBe("success");
    const counts = received.map(({ snapshot }) => snapshot.agents[0]?.messages.length ?? 0);
    expect(Math.max(...counts)).toBeGreaterThanOrEqual(14);
    // The conversation grew over the snapshots; none of the earlier ones grew with it.
    expect(new Set(counts).size).toBeGreaterThan(5);
    for (const { snapshot, json } of received) {
      expect(JSON.stringify(snapshot)).toBe(json);
      expect(JSON.parse(serializeSnapshot(snapshot))).toEqual(JSON.parse(json));
      expect(Buffer.from(encodeSnapshot(snapshot)).toString("utf8")).toBe(serializeSnapshot(snapshot));
    }
    // COMPLETE's instruction went into the message holding finish_explore's result, which
    // earlier snapshots hold without it.
    const blocksOf = (m: Message | undefined) => (m === undefined || typeof m.content === "string" ? [] : m.content);
    const last = received.at(-1)!.snapshot.agents[0]!;
    const index = last.messages.findIndex((m) => blocksOf(m).some((b) => b.type === "tool_result") && blocksOf(m).some((b) => b.type === "text" && b.text.includes("COMPLETE")));
    expect(index).toBeGreaterThan(0);
    const before = received.find(({ snapshot }) => (snapshot.agents[0]?.messages.length ?? 0) > index)!.snapshot.agents[0]!;
    expect(blocksOf(before.messages[index]).some((b) => b.type === "text")).toBe(false);
    expect(received.some(({ snapshot }) => snapshot.agents[0]?.journal?.map((file) => file.path).join() === "notes/a.md,notes/b.md")).toBe(true);
  });

  it("cannot change the run's conversation: a message is read-only, the arrays and other fields are the host's own", async () => {
    const { workspace, model } = await setup();
    const attempts: unknown[] = [];
    const result = await startTask({
      vision: "Write two notes",
      workspace,
      model,
      limits: { maxDepth: 0 },
      onSnapshot: (snapshot) => {
        const agent = snapshot.agents[0];
        if (!agent || agent.messages.length === 0) return;
        const first = agent.messages[0] as { content: unknown };
        try {
          first.content = "Forget the task.";
        } catch (error) {
          attempts.push(error);
        }
        agent.messages.push({ role: "user", content: "Injected by the host." });
        agent.usage.inputTokens += 1_000_000;
        snapshot.vision = "Another vision";
      },
    }).result;
    expect(result.status).toBe("success");
    expect(attempts.length).toBeGreaterThan(3);
    expect(attempts.every((error) => error instanceof TypeError)).toBe(true);
    const bodies = server!.requests.filter((r) => r.path === "/v1/messages").map((r) => JSON.stringify(r.body));
    expect(bodies.some((body) => body.includes("Injected by the host") || body.includes("Forget the task"))).toBe(false);
    expect(result.usage.inputTokens).toBeLessThan(1_000_000);
  });

  it("serialized, reads back and resumes like the object itself", async () => {
    const { workspace, model } = await setup();
    let latest: TaskSnapshot | undefined;
    const controller = new AbortController();
    const first = startTask({
      vision: "Write two notes",
      workspace,
      model,
      limits: { maxDepth: 0 },
      signal: controller.signal,
      onSnapshot: (snapshot) => {
        // Stopped once the first note is written and recorded in the journal; later snapshots record the stop.
        if (latest === undefined && snapshot.agents[0]?.journal?.length === 1) {
          latest = snapshot;
          controller.abort();
        }
      },
    });
    const stopped = await first.result;
    expect(stopped.status).not.toBe("success");
    const text = serializeSnapshot(latest!);
    expect(JSON.parse(text)).toEqual(JSON.parse(JSON.stringify(latest)));
    const resumed = await resumeTask(readSnapshot(JSON.parse(text)), { workspace, model }).result;
    expect(resumed.status).toBe("success");
  });
});

describe("serializeSnapshot and encodeSnapshot", () => {
  const agent = (messages: Message[]): AgentState => agentFixture("root", messages, false);
  const state = snapshotFixture;

  it("serializes a message once for every snapshot that shares it", () => {
    const call: Message = { role: "assistant", content: [{ type: "tool_use", id: "t1", name: "read_file", input: { path: "a.md" } }] };
    const live = agent([{ role: "user", content: "Do it" }, call]);
    const stringify = vi.spyOn(JSON, "stringify");
    try {
      const first = shareSnapshot(state([live]));
      expect(JSON.parse(serializeSnapshot(first)).agents[0].messages[1].content[0].input).toEqual({ path: "a.md" });
      live.messages.push({ role: "user", content: [{ type: "tool_result", tool_use_id: "t1", content: "# a" }] });
      const second = shareSnapshot(state([live]));
      const text = serializeSnapshot(second);
      expect(stringify.mock.calls.filter(([value]) => value === call)).toHaveLength(1);
      expect(JSON.parse(text).agents[0].messages).toHaveLength(3);
      expect(first.agents[0]!.messages).toHaveLength(2);
      // Encoding keeps each message's bytes the same way: once over the run.
      stringify.mockClear();
      expect(Buffer.from(encodeSnapshot(first)).toString()).toBe(serializeSnapshot(first));
      expect(Buffer.from(encodeSnapshot(second)).toString()).toBe(text);
      expect(stringify.mock.calls.filter(([value]) => value === call)).toHaveLength(1);
    } finally {
      stringify.mockRestore();
    }
  });

  it("encodes text beyond ASCII as the UTF-8 of the JSON, and a message changed in a copy afresh", () => {
    const awkward = "caf\u00e9 \u{1F600} \u2028 \ud800 lone \udfff \"quoted\" \\ back";
    const live = agent([{ role: "user", content: awkward }, { role: "assistant", content: [{ type: "text", text: `é${awkward}` }] }]);
    const first = shareSnapshot(state([live]));
    const bytes = Buffer.from(encodeSnapshot(first));
    expect(bytes.toString("utf8")).toBe(serializeSnapshot(first));
    expect(JSON.parse(bytes.toString("utf8"))).toEqual(JSON.parse(JSON.stringify(first)));
    // A host's own edited copy of a snapshot: the changed message is not a sealed one, so nothing kept is reused for it.
    const edited = { ...first, agents: [{ ...first.agents[0]!, messages: [first.agents[0]!.messages[0]!, { role: "user" as const, content: "changed ✓" }] }] };
    expect(Buffer.from(encodeSnapshot(edited)).toString("utf8")).toBe(JSON.stringify(edited));
  });

  it("gives the host bytes of its own: changing them changes no later snapshot's bytes", () => {
    const live = agent([{ role: "user", content: "Keep this text" }]);
    const first = shareSnapshot(state([live]));
    const bytes = encodeSnapshot(first);
    bytes.fill(0x20);
    expect(Buffer.from(encodeSnapshot(first)).toString("utf8")).toBe(serializeSnapshot(first));
    expect(JSON.parse(Buffer.from(encodeSnapshot(shareSnapshot(state([live])))).toString("utf8")).agents[0].messages[0].content).toBe("Keep this text");
  });

  it("copies a message that is not JSON data only instead of sharing it, and serializes it afresh", () => {
    const when = new Date(0);
    const call: Message = { role: "assistant", content: [{ type: "tool_use", id: "t1", name: "read_file", input: { path: "a.md", when } }] };
    const live = agent([{ role: "user", content: "Do it" }, call]);
    const first = shareSnapshot(state([live]));
    expect(first.agents[0]!.messages[1]).not.toBe(call);
    expect(Object.isFrozen(call)).toBe(false);
    when.setTime(Date.UTC(2030, 0, 1));
    expect(JSON.stringify(first)).toContain("1970-01-01");
    expect(serializeSnapshot(shareSnapshot(state([live])))).toContain("2030-01-01");
  });

  it("writes the same value as JSON.stringify for agents with and without journals, and none at all", () => {
    const withJournal = { ...agent([{ role: "user", content: "Go" }]), journal: [{ path: "x.md", mode: 0o644, text: "x\n" }, { path: "gone.md" }] };
    const empty = agent([]);
    // Not what a run hands over, but what JSON.stringify would write all the same.
    const odd = agent([{ role: "user", content: "Go" }]);
    odd.messages = [odd.messages[0]!, undefined as unknown as Message, null as unknown as Message, { role: "user", content: [{ type: "text", text: "x", extra: () => 1 } as never] }];
    odd.messages.length = 5;
    for (const snapshot of [state([]), state([empty]), state([odd]), shareSnapshot(state([withJournal, empty]))]) {
      expect(JSON.parse(serializeSnapshot(snapshot))).toEqual(JSON.parse(JSON.stringify(snapshot)));
      expect(Buffer.from(encodeSnapshot(snapshot)).toString("utf8")).toBe(serializeSnapshot(snapshot));
      if (!snapshot.agents.includes(odd)) expect(readSnapshot(JSON.parse(serializeSnapshot(snapshot)))).toEqual(readSnapshot(JSON.parse(JSON.stringify(snapshot))));
    }
  });
});
