/**
 * Attacks on the shared snapshots of a run (`snapshots.ts`, `model/sealed.ts`): messages and
 * journal entries are sealed (deep-frozen) and shared between the run and every snapshot; the
 * rest of a snapshot is the host's own copy; `serializeSnapshot` caches each sealed entry's JSON
 * and `estimateMessageTokens` each sealed message's estimate.
 *
 * Guarantees under attack:
 * 1. a snapshot handed to `onSnapshot` never changes afterwards;
 * 2. nothing a host does to a snapshot changes the run, its next requests or later snapshots;
 * 3. `serializeSnapshot(s)` parses to the value of `JSON.stringify(s)` and resumes like the run;
 * 4. no cached JSON or estimate is served for an entry that changed;
 * 5. nothing the run does later throws because an object it changes was sealed.
 *
 * Real git repositories and the offline Messages API server; no mocks.
 */
import { execa } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import type { KeenEvent } from "../events.js";
import { anthropic } from "../model/anthropic.js";
import { estimateMessageTokens } from "../model/estimate.js";
import type { Message } from "../model/model.js";
import { isSealed } from "../model/sealed.js";
import { COMPACTED_SUMMARY_HEADER, conversationProblem } from "../run/context.js";
import { reply, requestPosition, startMessagesServer, type MessagesServer, type ReplyPolicy, type ScriptedReply } from "../testing/index.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo } from "../workspace/test-repo.js";
import { encodeSnapshot, serializeSnapshot, shareSnapshot } from "./snapshots.js";
import { resumeTask, startTask, type TaskOptions } from "./start-task.js";
import { readSnapshot, type AgentState, type TaskSnapshot } from "./task-state.js";
import { done, explore, phaseOf, plan, write, type PhaseKey } from "./testing/scenario.js";
import { agentFixture, snapshotFixture } from "./testing/snapshot-fixture.js";

const servers: MessagesServer[] = [];
afterEach(async () => {
  for (const server of servers.splice(0)) await server.close();
});

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/** A step of a scripted agent; `complete_task_fix` answers the retry after a failed validation. */
type Key = PhaseKey | "complete_task_fix";
type Script = Record<string, Partial<Record<Key, ScriptedReply[]>>>;

const DEFAULTS: Record<PhaseKey, ScriptedReply> = {
  finish_explore: explore("COMPLETE"),
  submit_plan: reply.toolUse("submit_plan", { approach: "Do it directly.", subtasks: [] }),
  complete_task: done(),
  complete_merge: reply.toolUse("complete_merge", { summary: "Resolved." }),
};

/** The text of the newest user message that carries keen's tag line. */
function lastTaggedText(request: Record<string, any>): string {
  const messages = (request.messages ?? []) as Array<{ role: string; content: unknown }>;
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i]!;
    if (m.role !== "user") continue;
    const text = typeof m.content === "string" ? m.content : (m.content as any[]).filter((b) => b.type === "text").map((b) => b.text).join("\n");
    if (text.includes("[keen agent=")) return text;
  }
  return "";
}

/** Where a request is: agent, step and turn within the step. */
function position(request: Record<string, any>): { agent: string; key: Key; turn: number } {
  const { agent, turn } = requestPosition(request);
  let key: Key = phaseOf(request);
  if (key === "complete_task" && lastTaggedText(request).includes("The validation (")) key = "complete_task_fix";
  return { agent, key, turn };
}

/**
 * A deterministic policy (the reply depends only on the request). `fault` may answer one request
 * with an error instead (an overload, so the run ends `interrupted`, resumable). Requests for a
 * model-written summary of compacted turns are answered with a short summary.
 */
/** Where a test may answer a request with an error instead (see `faultOnce`). */
type Fault = { current?: (at: { agent: string; key: Key; turn: number }) => ScriptedReply | undefined };

function policy(script: Script, fault?: Fault): ReplyPolicy {
  return (request) => {
    if (typeof request.system?.[0]?.text === "string" && request.system[0].text.startsWith("You condense")) return reply.text("Summary: the parts were read.");
    const at = position(request);
    const faulty = fault?.current?.(at);
    if (faulty) return faulty;
    return script[at.agent]?.[at.key]?.[at.turn] ?? DEFAULTS[at.key === "complete_task_fix" ? "complete_task" : at.key];
  };
}

/**
 * Like `policy`, but the turn is counted per agent and step over the requests answered (pruning
 * folds turns away, so the conversation no longer tells). `reset` starts a new run's count; a
 * resumed run goes on with the count of the run it continues (a faulted request is not counted).
 */
function countingPolicy(script: Script, fault: Fault) {
  const turns = new Map<string, number>();
  const p: ReplyPolicy = (request) => {
    if (typeof request.system?.[0]?.text === "string" && request.system[0].text.startsWith("You condense")) return reply.text("Summary: the parts were read.");
    const { agent, key } = position(request);
    const turn = turns.get(`${agent}/${key}`) ?? 0;
    const faulty = fault.current?.({ agent, key, turn });
    if (faulty) return faulty;
    turns.set(`${agent}/${key}`, turn + 1);
    return script[agent]?.[key]?.[turn] ?? DEFAULTS[key === "complete_task_fix" ? "complete_task" : key];
  };
  return { policy: p, reset: () => turns.clear() };
}

/** Answers the first request at `where` with an overload (no retries: the run is interrupted). */
function faultOnce(where: { agent: string; key: Key; turn: number }) {
  let fired = false;
  return (at: { agent: string; key: Key; turn: number }) => {
    if (fired || at.agent !== where.agent || at.key !== where.key || at.turn !== where.turn) return undefined;
    fired = true;
    return reply.error(529);
  };
}

async function serverFor(p: ReplyPolicy): Promise<MessagesServer> {
  const server = await startMessagesServer({ policy: p });
  servers.push(server);
  return server;
}

/** A server answering `script` (with `fault` to break it) and a model that talks to it. */
async function scriptedServer(script: Script) {
  const fault: Fault = {};
  const server = await serverFor(policy(script, fault));
  return { fault, server, model: modelFor(server) };
}

function modelFor(server: MessagesServer) {
  return anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { baseDelayMs: 5, maxRetries: 0 } });
}

const RUN_ID = "run_5a5a5a5a-0000-4000-8000-000000000000";

interface Captured {
  snapshot: TaskSnapshot;
  /** JSON.stringify(snapshot) as handed over. */
  json: string;
  /** serializeSnapshot(snapshot) as handed over. */
  text: string;
}

/** An onSnapshot that keeps every snapshot with its JSON and serialization at handover. */
function recorder(after?: (snapshot: TaskSnapshot, index: number) => void) {
  const captured: Captured[] = [];
  const onSnapshot = (snapshot: TaskSnapshot) => {
    captured.push({ snapshot, json: JSON.stringify(snapshot), text: serializeSnapshot(snapshot) });
    after?.(snapshot, captured.length - 1);
  };
  return { captured, onSnapshot };
}

async function runTask(options: TaskOptions) {
  const run = startTask(options);
  const events: KeenEvent[] = [];
  for await (const event of run) events.push(event);
  return { events, result: await run.result };
}

/**
 * A run of `options` on a new repository of `files`, expected to end interrupted: its snapshots
 * checked, the last one serialized.
 */
async function interruptedRun(files: Record<string, string>, options: (workspace: LocalWorkspace, onSnapshot: TaskOptions["onSnapshot"]) => TaskOptions) {
  const dir = await createTestRepo(files);
  const workspace = await LocalWorkspace.open(dir, { sandbox: false });
  const first = recorder();
  const stopped = await runTask(options(workspace, first.onSnapshot));
  expect(stopped.result.status).toBe("interrupted");
  checkCaptured(first.captured);
  const last = first.captured.at(-1)!.snapshot;
  const text = serializeSnapshot(last);
  expect(JSON.parse(text)).toEqual(JSON.parse(JSON.stringify(last)));
  return { dir, workspace, text };
}

async function resume(snapshot: TaskSnapshot, options: Parameters<typeof resumeTask>[1]) {
  const run = resumeTask(snapshot, options);
  const events: KeenEvent[] = [];
  for await (const event of run) events.push(event);
  return { events, result: await run.result };
}

function deepFrozen(value: unknown, seen = new Set<object>()): boolean {
  if (value === null || typeof value !== "object" || seen.has(value)) return true;
  seen.add(value);
  if (!Object.isFrozen(value)) return false;
  return Object.values(value).every((inner) => deepFrozen(inner, seen));
}

/** Guarantees 1, 3 and 4 over every snapshot a run handed over, checked after the run ended. */
function checkCaptured(captured: Captured[]): void {
  expect(captured.length).toBeGreaterThan(0);
  for (const [i, { snapshot, json, text }] of captured.entries()) {
    // 1. Unchanged since handover.
    expect(JSON.stringify(snapshot) === json, `snapshot ${i} changed after it was handed over`).toBe(true);
    // 3. serializeSnapshot wrote its JSON, then and now.
    expect(JSON.parse(text), `serializeSnapshot(snapshot ${i}) at handover`).toEqual(JSON.parse(json));
    expect(serializeSnapshot(snapshot) === text, `serializeSnapshot(snapshot ${i}) after the run`).toBe(true);
    expect(Buffer.from(encodeSnapshot(snapshot)).toString("utf8") === text, `encodeSnapshot(snapshot ${i}) after the run`).toBe(true);
    for (const agent of snapshot.agents) {
      for (const [j, message] of agent.messages.entries()) {
        expect(isSealed(message) && deepFrozen(message), `snapshot ${i} agent ${agent.id} message ${j} sealed`).toBe(true);
        // 4. The kept estimate is the one worked out afresh (a clone is not sealed, so not cached).
        expect(estimateMessageTokens(message), `estimate of snapshot ${i} agent ${agent.id} message ${j}`).toBe(estimateMessageTokens(structuredClone(message) as Message));
      }
      for (const entry of agent.journal ?? []) expect(deepFrozen(entry)).toBe(true);
    }
  }
}

/** No error anywhere that looks like a write to a frozen object (guarantee 5). */
function checkNoFrozenWrites(events: KeenEvent[], agents: AgentState[]): void {
  const frozenWrite = /read[- ]only|Cannot assign|not extensible|Cannot add property|Cannot delete|Cannot define property|frozen/i;
  for (const event of events) {
    const text = JSON.stringify(event);
    expect(frozenWrite.test(text) && /error|fail/i.test(text) ? text : "", "an event reports a write to a frozen object").toBe("");
  }
  for (const agent of agents) {
    expect(agent.error?.code ?? "", `agent ${agent.id} ended with an internal error: ${agent.error?.message}`).not.toBe("internal_error");
  }
}

async function branchTrees(dir: string): Promise<Record<string, string>> {
  const branches = (await execa("git", ["branch", "--format=%(refname:short)"], { cwd: dir })).stdout.split("\n").filter(Boolean);
  const trees: Record<string, string> = {};
  for (const branch of branches) trees[branch] = (await execa("git", ["rev-parse", `${branch}^{tree}`], { cwd: dir })).stdout;
  return trees;
}

/** A value with the per-reply random parts (tool ids) made equal. */
function normalized(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value).replace(/toolu_[0-9A-Za-z_]+/g, "toolu_X"));
}

const messagesOf = (agents: readonly AgentState[]) => Object.fromEntries(agents.map((a) => [a.id, normalized(a.messages)]));
const blocks = (m: Message | undefined) => (m === undefined || typeof m.content === "string" ? [] : m.content);

// ---------------------------------------------------------------------------------------------
// A tree with everything that replaces messages: phase changes, reminders, a conflict resolved by
// the parent, a validation failure, thinking, journals.
// ---------------------------------------------------------------------------------------------

const TREE_FILES = { "README.md": "# app\n", "shared.txt": "base\n" };
const VALIDATION = "! grep -qs broken status.txt";
const think = (thought: string, name: string, input: unknown) => reply.blocks(reply.thinking(thought), reply.toolUseBlock(name, input));

const TREE: Script = {
  root: {
    // A text-only answer first: a reminder is appended (no tag), the next turn is turn 1.
    finish_explore: [reply.text("Let me think first."), think("Read the shared file.", "read_file", { path: "shared.txt" }), explore("PLAN")],
    submit_plan: [plan([{ title: "One" }, { title: "Two" }])],
    complete_merge: [think("Keep both sides.", "write_file", { path: "shared.txt", content: "one and two\n" }), reply.toolUse("complete_merge", { summary: "Kept both." })],
    // The first completion breaks the validation; the retry fixes it.
    complete_task: [write("status.txt", "broken\n"), done("Done, I think.")],
    complete_task_fix: [think("Fix the status.", "write_file", { path: "status.txt", content: "fixed\n" }), done("Fixed the status.")],
  },
  A: { complete_task: [write("shared.txt", "one\n"), write("a.txt", "a\n"), done("A done.")] },
  B: { complete_task: [reply.text("Hmm."), write("shared.txt", "two\n"), think("Done now.", "complete_task", { summary: "B done.", status: "success" })] },
};

function treeOptions(workspace: LocalWorkspace, model: ReturnType<typeof modelFor>, onSnapshot: TaskOptions["onSnapshot"]): TaskOptions {
  return {
    vision: "Build both parts",
    workspace,
    model,
    runId: RUN_ID,
    limits: { maxDepth: 1 },
    maxConcurrency: 2,
    onConflict: "resolve",
    validation: { command: VALIDATION },
    thinking: { budgetTokens: 1024 },
    maxTokens: 4096,
    ...(onSnapshot ? { onSnapshot } : {}),
  };
}

describe("a tree run: reminders, thinking, a resolved conflict, a failed validation", () => {
  it("hands over snapshots that never change, serialize as their JSON, and resume (serialized) to the uninterrupted end", async () => {
    const { fault, server, model } = await scriptedServer(TREE);

    // The uninterrupted run.
    const referenceDir = await createTestRepo(TREE_FILES);
    const reference = recorder();
    const { events, result } = await runTask(treeOptions(await LocalWorkspace.open(referenceDir, { sandbox: false }), model, reference.onSnapshot));
    expect(result.error).toBeUndefined();
    expect(result.status).toBe("success");
    checkNoFrozenWrites(events, result.agents);
    // The scenario did what it is for.
    expect(events.filter((e) => e.type === "git.merge").map((e) => (e as any).result)).toEqual(["merged", "resolved"]);
    expect(events.filter((e) => e.type === "validation.result" && e.agentId === "root").map((e) => (e as any).passed)).toContain(false);
    expect(server.requests.filter((r) => r.path === "/v1/messages").every((r) => r.status === 200)).toBe(true);
    const root = result.agents.find((a) => a.id === "root")!;
    expect(JSON.stringify(root.messages)).toContain("You answered without calling a tool");
    expect(JSON.stringify(root.messages)).toContain("The validation (");
    checkCaptured(reference.captured);
    // The same message objects are shared by consecutive snapshots (nothing was copied)...
    const shared = reference.captured.slice(1).some(({ snapshot }, i) => snapshot.agents[0]?.messages[0] === reference.captured[i]!.snapshot.agents[0]?.messages[0]);
    expect(shared).toBe(true);
    // ...and the message that got the phase instruction appended was replaced, not changed:
    // earlier snapshots hold a shorter message at the same index.
    const rootsOf = reference.captured.map(({ snapshot }) => snapshot.agents.find((a) => a.id === "root")?.messages ?? []);
    const replaced = rootsOf[rootsOf.length - 1]!.filter((_, i) => new Set(rootsOf.map((m) => (m[i] ? JSON.stringify(m[i]) : undefined)).filter(Boolean)).size > 1);
    expect(replaced.length).toBeGreaterThanOrEqual(3); // entering PLAN, SUMMON→COMPLETE, COMPLETE's retry…
    const referenceTrees = await branchTrees(referenceDir);
    const referenceMessages = messagesOf(result.agents);

    // The same run interrupted (the model overloaded) at three points, its last snapshot
    // serialized, read back and resumed: same branches, same conversations.
    const points = [
      { agent: "B", key: "complete_task" as Key, turn: 2 }, // B mid-phase while A is merged
      { agent: "root", key: "complete_task" as Key, turn: 1 }, // COMPLETE, before the validation fails
      { agent: "root", key: "complete_task_fix" as Key, turn: 1 }, // after the failed validation
    ];
    for (const point of points) {
      fault.current = faultOnce(point);
      const dir = await createTestRepo(TREE_FILES);
      const workspace = await LocalWorkspace.open(dir, { sandbox: false });
      const first = recorder();
      const stopped = await runTask(treeOptions(workspace, model, first.onSnapshot));
      expect(stopped.result.status, `interrupted at ${JSON.stringify(point)}`).toBe("interrupted");
      checkCaptured(first.captured);
      const last = first.captured.at(-1)!;
      const text = serializeSnapshot(last.snapshot);
      expect(JSON.parse(text)).toEqual(JSON.parse(JSON.stringify(last.snapshot)));
      const again = recorder();
      const resumed = await resume(readSnapshot(JSON.parse(text)), { workspace, model, thinking: { budgetTokens: 1024 }, maxTokens: 4096, onSnapshot: again.onSnapshot });
      expect(resumed.result.error, `resumed from ${JSON.stringify(point)}`).toBeUndefined();
      expect(resumed.result.status).toBe("success");
      checkNoFrozenWrites(resumed.events, resumed.result.agents);
      checkCaptured(again.captured);
      expect(await branchTrees(dir), `branches after resuming from ${JSON.stringify(point)}`).toEqual(referenceTrees);
      expect(messagesOf(resumed.result.agents), `conversations after resuming from ${JSON.stringify(point)}`).toEqual(referenceMessages);
    }
  }, 40_000);
});

describe("an overload while the parent resolves a conflict", () => {
  it("interrupts the run (resumable, as for any other turn), and the resume merges the child as the uninterrupted run does", async () => {
    const { fault, server, model } = await scriptedServer(TREE);
    const referenceDir = await createTestRepo(TREE_FILES);
    const reference = await runTask(treeOptions(await LocalWorkspace.open(referenceDir, { sandbox: false }), model, undefined));
    expect(reference.result.status).toBe("success");

    // The model stays unavailable for the parent's second turn of resolving B's conflict. The
    // resolution must not be taken as failed (rolled back, the run going on without B's work).
    fault.current = faultOnce({ agent: "root", key: "complete_merge", turn: 1 });
    const dir = await createTestRepo(TREE_FILES);
    const workspace = await LocalWorkspace.open(dir, { sandbox: false });
    const first = recorder();
    const { events, result } = await runTask(treeOptions(workspace, model, first.onSnapshot));
    checkCaptured(first.captured);
    expect(events.filter((e) => e.type === "git.merge").map((e) => (e as { result: string }).result)).not.toContain("rolled_back");
    expect(result.status).toBe("interrupted");

    const text = serializeSnapshot(first.captured.at(-1)!.snapshot);
    const resumed = await resume(readSnapshot(JSON.parse(text)), { workspace, model, thinking: { budgetTokens: 1024 }, maxTokens: 4096 });
    expect(resumed.result.status).toBe("success");
    expect(resumed.events.filter((e) => e.type === "git.merge").map((e) => (e as { result: string }).result)).toEqual(["resolved"]);
    expect(await branchTrees(dir)).toEqual(await branchTrees(referenceDir));
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------
// Context pruning: cleared tool results and compaction replace messages (and the first one).
// ---------------------------------------------------------------------------------------------

function partFiles(count: number): Record<string, string> {
  const out: Record<string, string> = { "README.md": "# app\n" };
  for (let i = 0; i < count; i++) out[`src/part${i}.ts`] = Array.from({ length: 100 }, (_, line) => `export const part${i}_${line} = "${"v".repeat(20)}";`).join("\n");
  return out;
}

const thought = (t: number) => `Part ${t % 6} next. ${"Thinking it through. ".repeat(60)}`;
const PRUNED: Script = {
  root: {
    finish_explore: [...Array.from({ length: 12 }, (_, t) => think(thought(t), "read_file", { path: `src/part${t % 6}.ts` })), reply.blocks(reply.thinking("Enough."), reply.toolUseBlock("finish_explore", { summary: "Read.", confidence: 0.9, next_phase: "COMPLETE" }))],
    complete_task: [
      reply.text("Let me see."), // a reminder follows
      think(thought(1), "write_file", { path: "out0.txt", content: "done\n" }),
      think(thought(2), "read_file", { path: "src/part3.ts" }),
      think(thought(3), "write_file", { path: "out1.txt", content: "done\n" }),
      reply.blocks(reply.thinking("Finish."), reply.toolUseBlock("complete_task", { summary: "Tidied.", status: "success" })),
    ],
  },
};

describe("a run whose context is pruned and compacted (thinking on, model-written summary)", () => {
  it("hands over snapshots that keep the conversation as it was, serialize as their JSON, and resume (serialized)", async () => {
    const fault: Fault = {};
    const counting = countingPolicy(PRUNED, fault);
    const server = await serverFor(counting.policy);
    const model = modelFor(server);
    const options = (workspace: LocalWorkspace, onSnapshot: TaskOptions["onSnapshot"]): TaskOptions => ({
      vision: "Tidy the parts",
      workspace,
      model,
      runId: RUN_ID,
      limits: { maxDepth: 0 },
      contextWindow: 12_000,
      context: { summary: "model" },
      thinking: { budgetTokens: 1024 },
      maxTokens: 2048,
      ...(onSnapshot ? { onSnapshot } : {}),
    });
    const referenceDir = await createTestRepo(partFiles(6));
    const reference = recorder();
    const { events, result } = await runTask(options(await LocalWorkspace.open(referenceDir, { sandbox: false }), reference.onSnapshot));
    expect(result.error).toBeUndefined();
    expect(result.status).toBe("success");
    checkNoFrozenWrites(events, result.agents);
    expect(server.requests.filter((r) => r.status !== 200)).toEqual([]);
    const pruned = events.filter((e) => e.type === "context.pruned") as Array<KeenEvent & { clearedToolResults: number; compactedMessages: number }>;
    expect(pruned.length).toBeGreaterThanOrEqual(2);
    expect(pruned.some((e) => e.compactedMessages > 0)).toBe(true);
    expect(pruned.some((e) => e.clearedToolResults > 0)).toBe(true);
    checkCaptured(reference.captured);
    for (const { snapshot } of reference.captured) {
      const root = snapshot.agents[0];
      if (root && root.messages.length > 0) expect(conversationProblem(root.messages)).toBeNull();
    }
    // Snapshots from before the first compaction still hold the turns it removed, whole.
    const compacted = reference.captured.findIndex(({ snapshot }) => JSON.stringify(snapshot.agents[0]?.messages[0] ?? "").includes(COMPACTED_SUMMARY_HEADER));
    expect(compacted).toBeGreaterThan(0);
    const before = reference.captured[compacted - 1]!.snapshot.agents[0]!;
    expect(JSON.stringify(before.messages)).not.toContain(COMPACTED_SUMMARY_HEADER);
    expect(blocks(before.messages[1]).some((b) => b.type === "thinking")).toBe(true);
    expect(JSON.stringify(before.messages)).toContain("export const part0_0");
    // The summary was the model's (a request of its own), written into a new first message.
    expect(server.requests.some((r) => String(r.body.system?.[0]?.text ?? "").startsWith("You condense"))).toBe(true);
    expect(JSON.stringify(result.agents[0]!.messages[0])).toContain("Summary: the parts were read.");
    const referenceTrees = await branchTrees(referenceDir);

    // Interrupted after the compaction, in COMPLETE; the serialized snapshot resumes to the same files.
    counting.reset();
    fault.current = faultOnce({ agent: "root", key: "complete_task", turn: 3 });
    const { dir, workspace, text } = await interruptedRun(partFiles(6), options);
    expect(text).toContain("Earlier conversation compacted");
    const again = recorder();
    const resumed = await resume(readSnapshot(JSON.parse(text)), { workspace, model, contextWindow: 12_000, context: { summary: "model" }, thinking: { budgetTokens: 1024 }, maxTokens: 2048, onSnapshot: again.onSnapshot });
    expect(resumed.result.error).toBeUndefined();
    expect(resumed.result.status).toBe("success");
    checkNoFrozenWrites(resumed.events, resumed.result.agents);
    checkCaptured(again.captured);
    expect(await branchTrees(dir)).toEqual(referenceTrees);
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------
// A host that does everything it can to the snapshots it is handed.
// ---------------------------------------------------------------------------------------------

const MARK = "INJECTED-BY-HOST";

/** Every change a careless or hostile host could make to a snapshot; records which ones threw. */
function vandalize(snapshot: TaskSnapshot, threw: Set<string>, allowed: Set<string>): void {
  const attempt = (name: string, change: () => void) => {
    try {
      change();
      allowed.add(name);
    } catch (error) {
      if (!(error instanceof TypeError)) throw error;
      threw.add(name);
    }
  };
  for (const agent of snapshot.agents) {
    for (const message of agent.messages) {
      const m = message as any;
      attempt("message.content =", () => (m.content = MARK));
      attempt("message.role =", () => (m.role = "assistant"));
      attempt("delete message.content", () => delete m.content);
      attempt("message.extra =", () => (m.extra = MARK));
      attempt("defineProperty(message)", () => Object.defineProperty(m, "content", { value: MARK }));
      attempt("setPrototypeOf(message)", () => Object.setPrototypeOf(m, { toJSON: () => MARK }));
      attempt("message.__proto__ =", () => (m.__proto__ = { toJSON: () => MARK }));
      if (!Array.isArray(m.content)) continue;
      attempt("content.push", () => m.content.push({ type: "text", text: MARK }));
      attempt("content.splice", () => m.content.splice(0, 1));
      attempt("content.length = 0", () => (m.content.length = 0));
      attempt("content[0] =", () => (m.content[0] = { type: "text", text: MARK }));
      attempt("content.fill", () => m.content.fill({ type: "text", text: MARK }));
      for (const block of m.content) {
        attempt("block.type =", () => (block.type = "text"));
        if (block.type === "text") attempt("text.text =", () => (block.text = MARK));
        if (block.type === "thinking") attempt("thinking.thinking =", () => (block.thinking = MARK));
        if (block.type === "thinking") attempt("thinking.signature =", () => (block.signature = MARK));
        if (block.type === "tool_result") attempt("tool_result.content =", () => (block.content = MARK));
        if (block.type === "tool_result") attempt("tool_result.is_error =", () => (block.is_error = true));
        if (block.type === "tool_use") {
          attempt("tool_use.name =", () => (block.name = MARK));
          attempt("tool_use.input =", () => (block.input = { path: MARK }));
          for (const key of Object.keys(block.input ?? {})) attempt("input[key] =", () => (block.input[key] = MARK));
          attempt("input.injected =", () => (block.input.injected = MARK));
          for (const key of Object.keys(block.input ?? {})) attempt("delete input[key]", () => delete block.input[key]);
          attempt("setPrototypeOf(input)", () => Object.setPrototypeOf(block.input, { path: MARK }));
          if (Array.isArray(block.input?.subtasks)) {
            attempt("input.subtasks.push", () => block.input.subtasks.push({ title: MARK, instructions: MARK }));
            for (const subtask of block.input.subtasks) attempt("subtask.title =", () => (subtask.title = MARK));
          }
        }
      }
    }
    for (const entry of agent.journal ?? []) {
      const e = entry as any;
      attempt("journal entry.text =", () => (e.text = MARK));
      attempt("journal entry.path =", () => (e.path = `${MARK}.txt`));
      attempt("delete journal entry.mode", () => delete e.mode);
    }
    // The host's own parts: allowed, and of no consequence to the run.
    agent.journal?.push({ path: `${MARK}.txt`, mode: 0o644, text: MARK });
    agent.journal?.reverse();
    agent.messages.push({ role: "user", content: MARK });
    agent.messages.splice(0, 1, { role: "user", content: MARK });
    agent.messages.reverse();
    agent.usage.inputTokens += 1_000_000;
    agent.usage.outputTokens = 1_000_000;
    for (const merge of Object.values(agent.merges)) {
      merge.status = "skipped";
      merge.preMergeSha = "0".repeat(40);
    }
    agent.merges[MARK] = { status: "pending" };
    agent.children.push(MARK);
    agent.phase = "DONE";
    agent.status = "failed";
    agent.summary = MARK;
    agent.turns = 999;
    agent.unchangedSince = 0;
    agent.title = MARK;
    if (agent.plan) {
      agent.plan.subtasks.push({ title: MARK, instructions: MARK });
      for (const subtask of agent.plan.subtasks) subtask.title = MARK;
      agent.plan.validation = { command: "false" };
    }
    if (agent.explore) agent.explore.next_phase = "PLAN";
    Object.defineProperty(agent, "messages", { value: [], enumerable: true });
    Object.setPrototypeOf(agent, { journal: [] });
  }
  snapshot.vision = MARK;
  snapshot.limits.maxTurnsPerPhase = 1;
  snapshot.limits.maxDepth = 0;
  snapshot.tokensSpent = 1e12;
  snapshot.nextSeq = 0;
  snapshot.validation = { command: "false" };
  snapshot.onConflict = "rollback";
  snapshot.agents.reverse();
  snapshot.agents.push(structuredClone(snapshot.agents[0]!));
  snapshot.agents.length = 1;
  // And, like a store that deep-freezes what it is given (immer, Redux toolkit), freezes it all.
  const freeze = (value: unknown) => {
    if (value === null || typeof value !== "object" || Object.isFrozen(value)) return;
    Object.freeze(value);
    for (const inner of Object.values(value)) freeze(inner);
  };
  freeze(snapshot);
}

/** What two runs of one scenario must agree on in a snapshot (not usage, shas or event numbers). */
function comparable(json: string): unknown {
  const snapshot = JSON.parse(json) as TaskSnapshot;
  return normalized({
    vision: snapshot.vision,
    limits: snapshot.limits,
    validation: snapshot.validation,
    onConflict: snapshot.onConflict,
    agents: snapshot.agents.map((a) => ({
      id: a.id,
      phase: a.phase,
      title: a.title,
      status: a.status,
      summary: a.summary,
      messages: a.messages,
      journal: a.journal,
      children: a.children,
      merges: Object.fromEntries(Object.entries(a.merges).map(([id, m]) => [id, m.status])),
      plan: a.plan,
      explore: a.explore,
      turns: a.turns,
      unchangedSince: a.unchangedSince,
    })),
  });
}

/** `message` is `final`, or `final` before text was appended to it (`appendUserText`). */
function earlierVersion(message: Message, final: Message | undefined): boolean {
  if (!final || message.role !== final.role) return false;
  const a = JSON.stringify(message.content);
  if (a === JSON.stringify(final.content)) return true;
  if (message.role !== "user") return false;
  if (typeof message.content === "string") {
    const first = typeof final.content === "string" ? final.content : (final.content[0] as { text?: string } | undefined)?.text;
    return typeof first === "string" && first.startsWith(`${message.content}\n\n`) || (typeof final.content !== "string" && first === message.content);
  }
  if (typeof final.content === "string") return false;
  const prefix = final.content.slice(0, message.content.length);
  return JSON.stringify(prefix) === a && final.content.slice(message.content.length).every((b) => b.type === "text");
}

describe("a host that changes everything in the snapshots it is handed", () => {
  it("gets a TypeError for every change to a shared message or journal entry, and changes nothing of the run", async () => {
    const server = await serverFor(policy(TREE));
    const model = modelFor(server);
    const requestsOf = (from: number) =>
      server.requests.slice(from).filter((r) => r.path === "/v1/messages").map((r) => normalized({ system: r.body.system, tools: r.body.tools, messages: r.body.messages, max_tokens: r.body.max_tokens, thinking: r.body.thinking }));

    const baseline = recorder();
    const calm = await runTask({ ...treeOptions(await LocalWorkspace.open(await createTestRepo(TREE_FILES), { sandbox: false }), model, baseline.onSnapshot), maxConcurrency: 1 });
    expect(calm.result.status).toBe("success");
    const baselineRequests = requestsOf(0);
    const start = server.requests.length;

    const threw = new Set<string>();
    const allowed = new Set<string>();
    const attacked = recorder((snapshot) => vandalize(snapshot, threw, allowed));
    const { events, result } = await runTask({ ...treeOptions(await LocalWorkspace.open(await createTestRepo(TREE_FILES), { sandbox: false }), model, attacked.onSnapshot), maxConcurrency: 1 });
    expect(result.error).toBeUndefined();
    expect(result.status).toBe("success");
    checkNoFrozenWrites(events, result.agents);

    // Every change to a shared entry threw; none went through silently.
    for (const name of [
      "message.content =", "message.role =", "delete message.content", "message.extra =", "defineProperty(message)", "setPrototypeOf(message)", "message.__proto__ =",
      "content.push", "content.splice", "content.length = 0", "content[0] =", "content.fill", "block.type =", "text.text =", "thinking.thinking =", "thinking.signature =",
      "tool_result.content =", "tool_result.is_error =", "tool_use.name =", "tool_use.input =", "input[key] =", "input.injected =", "delete input[key]", "setPrototypeOf(input)",
      "input.subtasks.push", "subtask.title =", "journal entry.text =", "journal entry.path =", "delete journal entry.mode",
    ]) {
      expect(threw.has(name), `${name} threw a TypeError`).toBe(true);
      expect(allowed.has(name), `${name} went through on a shared entry`).toBe(false);
    }

    // The run sent exactly the requests of the undisturbed run, and every snapshot (as handed
    // over, before the host got to it) holds what the undisturbed run's does.
    expect(requestsOf(start)).toEqual(baselineRequests);
    // (Snapshots are taken by whichever agent finishes a step, so which intermediate states of
    // one agent another agent's snapshot catches depends on timing: the last snapshot must match,
    // each agent's phases must come in the same order, and every message in every snapshot must
    // be the undisturbed run's final message at that index or an earlier version of it.)
    expect(comparable(attacked.captured.at(-1)!.json)).toEqual(comparable(baseline.captured.at(-1)!.json));
    const phases = (captured: Captured[]) => {
      const seen: Record<string, string[]> = {};
      for (const { json } of captured) for (const a of (JSON.parse(json) as TaskSnapshot).agents) if ((seen[a.id] ??= []).at(-1) !== a.phase) seen[a.id]!.push(a.phase);
      return seen;
    };
    expect(phases(attacked.captured)).toEqual(phases(baseline.captured));
    const finals = new Map((JSON.parse(baseline.captured.at(-1)!.json) as TaskSnapshot).agents.map((a) => [a.id, normalized(a.messages) as Message[]]));
    for (const [k, { json }] of attacked.captured.entries()) {
      for (const agent of (JSON.parse(json) as TaskSnapshot).agents) {
        const final = finals.get(agent.id)!;
        for (const [i, message] of (normalized(agent.messages) as Message[]).entries()) {
          expect(earlierVersion(message, final[i]), `snapshot ${k}, agent ${agent.id}, message ${i}`).toBe(true);
        }
      }
    }
    for (const { json } of attacked.captured) {
      expect(json).not.toContain(MARK);
      const snapshot = JSON.parse(json) as TaskSnapshot;
      expect(snapshot.tokensSpent).toBeLessThan(1e9);
      for (const agent of snapshot.agents) expect(agent.usage.inputTokens).toBeLessThan(1_000_000);
    }
    expect(JSON.stringify(server.requests.slice(start).map((r) => r.body))).not.toContain(MARK);
    expect(result.usage.inputTokens).toBeLessThan(1_000_000);
    expect(result.agents.map((a) => a.title)).not.toContain(MARK);
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------
// Content that JSON handles in its own ways: lone surrogates, separators, huge and deeply nested
// tool inputs, odd keys.
// ---------------------------------------------------------------------------------------------

function nested(depth: number): unknown {
  let value: unknown = { leaf: "\ud800 end" };
  for (let i = 0; i < depth; i++) value = i % 2 ? { [`k${i}`]: value } : [value];
  return value;
}

const ODD = "lone \ud800 high, \udfff low, pair \ud83d\ude00, separators \u2028\u2029, nul \u0000, bom \ufeff, quote \" back \\ slash";
const CONTENT: Script = {
  root: {
    complete_task: [
      reply.toolUse("read_file", { path: "README.md" }, { text: ODD }),
      write("uni.txt", `${ODD}\n`),
      reply.toolUse("no_such_tool", nested(1200)),
      reply.toolUse("no_such_tool", { blob: "z".repeat(12_000), [ODD]: ODD, __proto__x: 1, "": "", "1e3": 1e300, neg: -0, big: 12345678901234567890, list: Array.from({ length: 200 }, (_, i) => ({ i, s: `\udc00${i}` })) }),
      reply.toolUse("read_file", { path: "big.txt" }),
      reply.blocks(reply.textBlock(ODD), reply.toolUseBlock("complete_task", { summary: ODD, status: "success" })),
    ],
  },
};
const CONTENT_FILES = { "README.md": `# app ${ODD}\n`, "big.txt": Array.from({ length: 2000 }, (_, i) => `line ${i} ${"w".repeat(40)}`).join("\n") };

describe("content JSON handles in its own ways", () => {
  it("serializes as JSON.stringify does and resumes (serialized) to the uninterrupted end", async () => {
    const { fault, server, model } = await scriptedServer(CONTENT);
    const options = (workspace: LocalWorkspace, onSnapshot: TaskOptions["onSnapshot"]): TaskOptions => ({
      vision: `Handle odd text ${ODD}`,
      workspace,
      model,
      runId: RUN_ID,
      limits: { maxDepth: 0 },
      ...(onSnapshot ? { onSnapshot } : {}),
    });
    const referenceDir = await createTestRepo(CONTENT_FILES);
    const reference = recorder();
    const { events, result } = await runTask(options(await LocalWorkspace.open(referenceDir, { sandbox: false }), reference.onSnapshot));
    expect(result.error).toBeUndefined();
    expect(result.status).toBe("success");
    checkNoFrozenWrites(events, result.agents);
    checkCaptured(reference.captured);
    const last = reference.captured.at(-1)!;
    expect(last.text).toContain("\\ud800");
    expect(last.text.length).toBeGreaterThan(40_000);
    // The odd text survived as it came (the lone surrogates too).
    expect(JSON.stringify(JSON.parse(last.text).agents[0].messages)).toContain(JSON.stringify(ODD).slice(1, -1));
    // The deep and the huge input are in the conversation whole.
    const inputs = result.agents[0]!.messages.flatMap((m) => blocks(m)).filter((b) => b.type === "tool_use" && b.name === "no_such_tool").map((b) => JSON.stringify((b as { input: unknown }).input));
    expect(inputs).toEqual([JSON.stringify(nested(1200)), expect.stringContaining("z".repeat(12_000))]);
    const referenceTrees = await branchTrees(referenceDir);
    const referenceMessages = messagesOf(result.agents);

    for (const point of [{ agent: "root", key: "complete_task" as Key, turn: 4 }, { agent: "root", key: "complete_task" as Key, turn: 5 }]) {
      fault.current = faultOnce(point);
      const { dir, workspace, text } = await interruptedRun(CONTENT_FILES, options);
      const again = recorder();
      const resumed = await resume(readSnapshot(JSON.parse(text)), { workspace, model, onSnapshot: again.onSnapshot });
      expect(resumed.result.error).toBeUndefined();
      expect(resumed.result.status).toBe("success");
      checkCaptured(again.captured);
      expect(await branchTrees(dir)).toEqual(referenceTrees);
      expect(messagesOf(resumed.result.agents)).toEqual(referenceMessages);
    }
  }, 30_000);
});

// ---------------------------------------------------------------------------------------------
// serializeSnapshot of snapshots a host changed, and sealed entries whose values can still change.
// ---------------------------------------------------------------------------------------------

/** A snapshot as a run hands it over: shared, sealed entries, their JSON already cached. */
function handedOver(): TaskSnapshot {
  const snapshot = shareSnapshot(snapshotFixture([agentFixture("root"), agentFixture("A"), agentFixture("B")]));
  serializeSnapshot(snapshot);
  return snapshot;
}
/** serializeSnapshot's value, or what it threw. */
function serializedValue(snapshot: TaskSnapshot): unknown {
  try {
    return JSON.parse(serializeSnapshot(snapshot));
  } catch (error) {
    return `threw ${String(error)}`;
  }
}

describe("serializeSnapshot of a snapshot the host changed (its own copy, as the docs say)", () => {
  it("writes what JSON.stringify writes after the host replaced, dropped or emptied messages and journal entries", () => {
    const snapshot = handedOver();
    const root = snapshot.agents[0]!;
    root.messages = [...root.messages, { role: "assistant", content: [{ type: "text", text: "host's own \ud800" }] }, undefined as never];
    root.messages.length = 5; // holes
    root.journal = [];
    delete snapshot.agents[1]!.journal;
    snapshot.agents[2]!.messages.splice(0, 1, { role: "user", content: "replaced" });
    expect(serializedValue(snapshot)).toEqual(JSON.parse(JSON.stringify(snapshot)));
  });

  // JSON.stringify writes a hole in a list as null.
  it("writes a hole in the agents list as null, as JSON.stringify does", () => {
    const snapshot = handedOver();
    delete (snapshot.agents as unknown[])[1];
    expect(serializedValue(snapshot)).toEqual(JSON.parse(JSON.stringify(snapshot)));
  });

  it("writes an agent entry with no JSON form as null, as JSON.stringify does", () => {
    const snapshot = handedOver();
    (snapshot.agents as unknown[])[1] = undefined;
    expect(serializedValue(snapshot)).toEqual(JSON.parse(JSON.stringify(snapshot)));
  });

  // A host may drop the conversation from its copy (or set it or the journal to null) to store less.
  it("writes an agent without messages, or with a null journal, as JSON.stringify does", () => {
    const snapshot = handedOver();
    delete (snapshot.agents[1] as Partial<AgentState>).messages;
    (snapshot.agents[2] as { journal: unknown }).journal = null;
    expect(serializedValue(snapshot)).toEqual(JSON.parse(JSON.stringify(snapshot)));
  });

  // JSON.stringify reads own enumerable fields only and lets a `toJSON` decide.
  it("follows JSON.stringify for an agent whose prototype was replaced, or that has a toJSON", () => {
    const snapshot = handedOver();
    Object.setPrototypeOf(snapshot.agents[0]!, { journal: [{ path: "from-the-prototype.md" }] });
    delete snapshot.agents[0]!.journal;
    Object.defineProperty(snapshot.agents[1]!, "messages", { value: [], enumerable: false });
    (snapshot.agents[2] as unknown as { toJSON: () => unknown }).toJSON = () => ({ id: "B", redacted: true });
    expect(serializedValue(snapshot)).toEqual(JSON.parse(JSON.stringify(snapshot)));
  });
});

/** A Model of the host's own: answers by agent step, and may put values in tool inputs that JSON writes its own way. */
const usage = { inputTokens: 1, outputTokens: 2, cacheCreationInputTokens: 0, cacheReadInputTokens: 0 };

function hostModel(input: () => unknown) {
  let n = 0;
  return {
    id: "host:test",
    contextWindow: 200_000,
    async *stream(request: { messages: Message[] }) {
      const { phase, turn } = requestPosition(request);
      const call = (name: string, value: unknown) => ({ type: "tool_use" as const, id: `call_${n++}`, name, input: value });
      const content =
        phase === "EXPLORE"
          ? [call("finish_explore", { summary: "Looked.", confidence: 1, next_phase: "COMPLETE" })]
          : turn === 0
            ? [call("no_such_tool", input())]
            : [call("complete_task", { summary: "Done.", status: "success" })];
      yield { type: "response" as const, response: { id: `r${n}`, model: "host", content, stopReason: "tool_use", usage } };
    },
  };
}

describe("a message holding values that can change while frozen (a host Model's non-JSON values)", () => {
  // A Date's time, a typed array's bytes and the value behind a getter cannot be frozen: such a
  // message is not sealed, so nothing worked out from it is kept, and snapshots hold a copy.
  it("is not sealed: snapshots keep it as it was, its estimate follows it", async () => {
    const when = new Date(0);
    const bytes = new Uint8Array([1, 2, 3]);
    let lazy = "short";
    const input = () => {
      const value: Record<string, unknown> = { when, bytes };
      Object.defineProperty(value, "lazy", { get: () => lazy, enumerable: true });
      return value;
    };
    const captured = recorder();
    const dir = await createTestRepo({ "README.md": "# app\n" });
    const { result } = await runTask({ vision: "Call a tool", workspace: await LocalWorkspace.open(dir, { sandbox: false }), model: hostModel(input), limits: { maxDepth: 0 }, onSnapshot: captured.onSnapshot });
    expect(result.status).toBe("success");
    const isCall = (m: Message) => blocks(m).some((b) => b.type === "tool_use" && b.name === "no_such_tool");
    const live = result.agents[0]!.messages.find(isCall)!;
    expect(isSealed(live)).toBe(false);
    expect(Object.isFrozen(live)).toBe(false);
    const estimated = estimateMessageTokens(live);

    when.setTime(Date.UTC(2030, 0, 1));
    bytes[0] = 255;
    lazy = "much longer than before ".repeat(50);

    // Every snapshot still reads, and serializes, as it did when handed over.
    for (const { snapshot, json, text } of captured.captured) {
      expect(JSON.stringify(snapshot)).toBe(json);
      expect(serializeSnapshot(snapshot)).toBe(text);
      expect(JSON.parse(text)).toEqual(JSON.parse(json));
    }
    expect(JSON.stringify(captured.captured.at(-1)!.snapshot)).not.toContain("much longer");
    expect(estimateMessageTokens(live)).toBe(estimateMessageTokens({ ...live }));
    expect(estimateMessageTokens(live)).toBeGreaterThan(estimated);
  });
});

// ---------------------------------------------------------------------------------------------
// Beyond snapshots: events carry objects of the run too.
// ---------------------------------------------------------------------------------------------

describe("a host that changes the events it is given (beyond snapshots)", () => {
  const SCRIPT: Script = { root: { complete_task: [write("notes.md", "from the model\n"), done()] } };

  // Listeners run before the tool does: one that changes the event's input (to redact or shorten
  // it for display) must change neither what the tool does nor the conversation, and an event the
  // host keeps stays its own to change.
  it("a tool.started listener that edits the event's input changes neither the tool call nor the conversation", async () => {
    const server = await serverFor(policy(SCRIPT));
    const dir = await createTestRepo({ "README.md": "# app\n" });
    const captured = recorder();
    const run = startTask({ vision: "Write notes", workspace: await LocalWorkspace.open(dir, { sandbox: false }), model: modelFor(server), runId: RUN_ID, limits: { maxDepth: 0 }, onSnapshot: captured.onSnapshot });
    const kept: Array<{ input: unknown }> = [];
    run.on("tool.started", (event) => {
      kept.push(event);
      const input = event.input as { content?: string };
      if (typeof input?.content === "string") input.content = "[redacted by the host]\n";
    });
    const result = await run.result;
    expect(result.status).toBe("success");
    expect.soft((await execa("git", ["show", "keen/5a5a5a5a:notes.md"], { cwd: dir })).stdout, "the file the tool wrote").toBe("from the model");
    expect.soft(JSON.stringify(server.requests.map((r) => r.body)), "the requests sent after the tool call").not.toContain("redacted by the host");
    expect.soft(JSON.stringify(captured.captured.at(-1)!.snapshot), "the last snapshot").not.toContain("redacted by the host");
    // An event the host kept, changed after the run: its own copy, not the sealed message's input.
    const write = kept.find((event) => typeof (event.input as { content?: unknown }).content === "string")!;
    expect.soft(() => ((write.input as { path: string }).path = "elsewhere.md"), "changing a kept event afterwards").not.toThrow();
  });

  // The run counts usage against its budget as the model reported it, whatever a listener does to
  // the event; the usage an agent.completed event carries is the event's own too.
  it("a model.usage listener that edits the event's usage does not change the run's tokensSpent", async () => {
    const server = await serverFor(policy(SCRIPT));
    const dir = await createTestRepo({ "README.md": "# app\n" });
    const captured = recorder();
    const run = startTask({ vision: "Write notes", workspace: await LocalWorkspace.open(dir, { sandbox: false }), model: modelFor(server), runId: RUN_ID, limits: { maxDepth: 0 }, onSnapshot: captured.onSnapshot });
    run.on("model.usage", (event) => {
      event.usage.outputTokens += 1_000_000;
      event.agentTotal.outputTokens += 1_000_000;
    });
    run.on("agent.completed", (event) => {
      event.usage.inputTokens += 1_000_000;
    });
    const result = await run.result;
    expect(result.status).toBe("success");
    expect(captured.captured.at(-1)!.snapshot.tokensSpent).toBeLessThan(1_000_000);
    expect(result.usage.outputTokens).toBeLessThan(1_000_000);
    expect(result.usage.inputTokens).toBeLessThan(1_000_000);
    expect(result.agents[0]!.usage.inputTokens).toBeLessThan(1_000_000);
  });
});
