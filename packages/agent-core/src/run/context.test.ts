import fc from "fast-check";
import { afterEach, describe, expect, it } from "vitest";
import { isKeenError } from "../errors.js";
import type { KeenEvent, KeenEventOf } from "../events.js";
import { anthropic } from "../model/anthropic.js";
import type { ContentBlock, Message, Model } from "../model/model.js";
import { flattenRequest } from "../testing/prompt-cache.js";
import { CACHE_LOOKBACK_BLOCKS, reply, startMessagesServer, type MessagesServer, type RecordedRequest, type ReplyPolicy } from "../testing/index.js";
import { builtinTools } from "../tools/index.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo } from "../workspace/test-repo.js";
import {
  COMPACTED_SUMMARY_HEADER,
  ContextTracker,
  conversationProblem,
  estimateMessageTokens,
  isThinkingTurn,
  pruneConversation,
} from "./context.js";
import { startTask } from "../lifecycle/start-task.js";
import { startRun } from "./start-run.js";

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const estimate = (messages: readonly Message[]) => messages.reduce((sum, m) => sum + estimateMessageTokens(m), 0);
const ofType = <T extends KeenEvent["type"]>(events: KeenEvent[], type: T) => events.filter((e): e is KeenEventOf<T> => e.type === type);

/** A user message answering `ids`, each result `size` characters long. */
function results(ids: string[], size: number): Message {
  return { role: "user", content: ids.map((id) => ({ type: "tool_result" as const, tool_use_id: id, content: `${id}:`.padEnd(size, "x") })) };
}

function toolTurn(id: string, path: string, thinking?: string): Message {
  const content: ContentBlock[] = [];
  if (thinking) content.push({ type: "thinking", thinking, signature: `sig-${id}` });
  content.push({ type: "tool_use", id, name: "read_file", input: { path } });
  return { role: "assistant", content };
}

/** task, then `turns` tool turns (every other one with thinking), each answered by a 4 kB result. */
function longConversation(turns: number): Message[] {
  const messages: Message[] = [{ role: "user", content: "Refactor the parser." }];
  for (let i = 0; i < turns; i++) {
    messages.push(toolTurn(`t${i}`, `src/file${i}.ts`, i % 2 === 0 ? `Look at file ${i}.` : undefined));
    messages.push(results([`t${i}`], 4_000));
  }
  return messages;
}

describe("pruneConversation", () => {
  it("leaves a conversation under the target alone", () => {
    const messages = longConversation(3);
    const result = pruneConversation(messages, { tokens: 1_000, target: 2_000, keepTurns: 1 });
    expect(result).toMatchObject({ clearedToolResults: 0, compactedMessages: 0, tokensBefore: 1_000, tokensAfter: 1_000 });
    expect(result.messages).toEqual(messages);
  });

  it("clears the oldest tool results first, names what was cleared, and keeps the newest turns", () => {
    const messages = longConversation(6);
    const before = estimate(messages);
    // About two results' worth has to go.
    const result = pruneConversation(messages, { tokens: before, target: before - 1_800, keepTurns: 2 });
    expect(result.compactedMessages).toBe(0);
    expect(result.clearedToolResults).toBe(2);
    expect(conversationProblem(result.messages)).toBeNull();
    const contentOf = (i: number) => ((result.messages[i]!.content as ContentBlock[])[0] as { content: string }).content;
    expect(contentOf(2)).toBe("[tool result cleared to save context: read_file src/file0.ts, 4 kB]");
    expect(contentOf(4)).toMatch(/^\[tool result cleared to save context: read_file src\/file1\.ts, 4 kB\]$/);
    expect(contentOf(6)).toMatch(/^t2:x+$/);
    // The tool_use ids still pair up, and nothing else changed.
    expect((result.messages[2]!.content as ContentBlock[])[0]).toMatchObject({ type: "tool_result", tool_use_id: "t0" });
    for (const i of [0, 1, 3, 5, 6, 7, 8, 9, 10, 11, 12]) expect(result.messages[i]).toBe(messages[i]);
    expect(result.tokensAfter).toBeLessThanOrEqual(before - 1_800);
    expect(estimate(result.messages)).toBeLessThan(before);
  });

  it("never clears the results of the newest turns, even far above the target", () => {
    const messages = longConversation(3);
    const result = pruneConversation(messages, { tokens: 100_000, target: 10, keepTurns: 3 });
    expect(result.clearedToolResults).toBe(0);
    expect(result.compactedMessages).toBe(0);
    expect(result.messages).toEqual(messages);
  });

  it("compacts older turns into a summary on the first message when clearing is not enough, dropping thinking turns whole", () => {
    const messages = longConversation(8);
    messages[4] = { role: "user", content: [...(messages[4]!.content as ContentBlock[]), { type: "text", text: "Phase COMPLETE: do the work." }] };
    const before = estimate(messages);
    const result = pruneConversation(messages, { tokens: before, target: 1_500, keepTurns: 2 });
    expect(result.clearedToolResults).toBe(6);
    expect(result.compactedMessages).toBeGreaterThan(0);
    expect(result.messages).toHaveLength(messages.length - result.compactedMessages);
    expect(conversationProblem(result.messages)).toBeNull();

    const first = result.messages[0]!.content as Array<{ type: string; text: string }>;
    expect(first[0]).toEqual({ type: "text", text: "Refactor the parser." });
    expect(first[1]!.text.startsWith(COMPACTED_SUMMARY_HEADER)).toBe(true);
    expect(first[1]!.text).toContain('- You called read_file({"path":"src/file0.ts"}) → ok, 4 kB');
    expect(first[1]!.text).toContain("- User: Phase COMPLETE: do the work.");
    // Every assistant turn left is one of the originals, the very same object.
    for (const message of result.messages.filter((m) => m.role === "assistant")) expect(messages).toContain(message);
    // The two newest turns and their results are untouched.
    expect(result.messages.slice(-4)).toEqual(messages.slice(-4));
    expect(result.messages.at(-2)).toBe(messages.at(-2));
  });

  it("extends the existing summary when it compacts again", () => {
    const first = pruneConversation(longConversation(8), { tokens: 40_000, target: 1_000, keepTurns: 4 });
    expect(first.compactedMessages).toBeGreaterThan(0);
    const grown = [...first.messages];
    for (let i = 8; i < 12; i++) grown.push(toolTurn(`t${i}`, `src/file${i}.ts`), results([`t${i}`], 4_000));
    const second = pruneConversation(grown, { tokens: estimate(grown), target: 1_000, keepTurns: 2 });
    expect(second.compactedMessages).toBeGreaterThan(0);
    const texts = (second.messages[0]!.content as Array<{ text: string }>).map((b) => b.text);
    expect(texts).toHaveLength(2);
    expect(texts[1]!.split(COMPACTED_SUMMARY_HEADER)).toHaveLength(2);
    expect(texts[1]).toContain("src/file0.ts");
    expect(texts[1]).toContain("src/file8.ts");
    expect(conversationProblem(second.messages)).toBeNull();
  });

  it("rejects a keepTurns below 1 with a typed error", () => {
    expect(() => pruneConversation(longConversation(2), { tokens: 10, target: 1, keepTurns: 0 })).toThrow(expect.objectContaining({ code: "config_error" }));
  });

  it("property: the output is a valid conversation, never longer, with assistant turns kept whole and the newest turns untouched", () => {
    const turn = fc.record({
      thinking: fc.constantFrom("none", "thinking", "redacted"),
      text: fc.option(fc.string({ minLength: 1, maxLength: 40 }), { nil: undefined }),
      calls: fc.array(fc.integer({ min: 1, max: 9_000 }), { minLength: 0, maxLength: 3 }),
      userText: fc.option(fc.string({ minLength: 1, maxLength: 60 }), { nil: undefined }),
    });
    const conversation = fc.array(turn, { minLength: 0, maxLength: 14 }).map((turns) => {
      const messages: Message[] = [{ role: "user", content: "task" }];
      turns.forEach((t, i) => {
        const content: ContentBlock[] = [];
        if (t.thinking === "thinking") content.push({ type: "thinking", thinking: `think ${i}`, signature: `sig${i}` });
        if (t.thinking === "redacted") content.push({ type: "redacted_thinking", data: `data${i}` });
        content.push({ type: "text", text: t.text ?? `turn ${i}` });
        t.calls.forEach((_, j) => content.push({ type: "tool_use", id: `c${i}_${j}`, name: "read_file", input: { path: `f${i}_${j}` } }));
        messages.push({ role: "assistant", content });
        const answer: ContentBlock[] = t.calls.map((size, j) => ({ type: "tool_result", tool_use_id: `c${i}_${j}`, content: "r".repeat(size) }));
        answer.push({ type: "text", text: t.userText ?? "go on" });
        messages.push({ role: "user", content: answer });
      });
      return messages;
    });
    fc.assert(
      fc.property(conversation, fc.integer({ min: 1, max: 4 }), fc.double({ min: 0, max: 1, noNaN: true }), fc.double({ min: 0.5, max: 2, noNaN: true }), (messages, keepTurns, fraction, scale) => {
        const snapshot = structuredClone(messages);
        const tokens = estimate(messages);
        const result = pruneConversation(messages, { tokens, target: Math.floor(tokens * fraction), keepTurns, scale });
        expect(messages).toEqual(snapshot); // the input is not modified
        expect(conversationProblem(result.messages)).toBeNull();
        expect(result.messages.length).toBeLessThanOrEqual(messages.length);
        expect(estimate(result.messages)).toBeLessThanOrEqual(tokens);
        expect(result.tokensAfter).toBeLessThanOrEqual(tokens);
        expect(result.messages.length).toBe(messages.length - result.compactedMessages);
        // Assistant turns are the original objects, and a thinking turn is either there or gone.
        const originals = new Set(messages);
        for (const message of result.messages) if (message.role === "assistant") expect(originals.has(message)).toBe(true);
        for (const message of messages.filter(isThinkingTurn)) {
          const kept = result.messages.find((m) => m === message);
          if (kept) expect(kept).toEqual(snapshot[messages.indexOf(message)]);
        }
        // The newest keepTurns assistant turns and what follows them are untouched.
        const assistants = messages.flatMap((m, i) => (m.role === "assistant" ? [i] : []));
        if (assistants.length >= keepTurns) {
          const from = assistants[assistants.length - keepTurns]!;
          const tail = messages.slice(from);
          expect(result.messages.slice(result.messages.length - tail.length)).toEqual(tail);
          for (const [i, message] of tail.entries()) expect(result.messages[result.messages.length - tail.length + i]).toBe(message);
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe("conversationProblem", () => {
  it("finds what the API would reject", () => {
    expect(conversationProblem([])).toMatch(/empty/);
    expect(conversationProblem([{ role: "assistant", content: "hi" }])).toMatch(/message 0 is from the assistant/);
    expect(conversationProblem([{ role: "user", content: "a" }, toolTurn("x", "a.ts"), { role: "user", content: "b" }])).toMatch(/leaves tool_use x unanswered/);
    expect(conversationProblem([{ role: "user", content: "a" }, toolTurn("x", "a.ts"), results(["y"], 10)])).toMatch(/answers tool_use y/);
    expect(conversationProblem(longConversation(3))).toBeNull();
  });
});

describe("ContextTracker settings", () => {
  it("refuses bad settings with a ConfigError", async () => {
    server = await startMessagesServer({ script: [] });
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
    expect(() => new ContextTracker(model, { pruneAt: 0.5, target: 0.6 })).toThrow(/target/);
    expect(() => new ContextTracker(model, { contextWindow: -5 })).toThrow(expect.objectContaining({ code: "config_error" }));
    const workspace = await LocalWorkspace.open(await createTestRepo());
    try {
      startRun({ vision: "x", workspace, model, tools: [], context: { keepTurns: 0 } });
      expect.unreachable();
    } catch (error) {
      expect(isKeenError(error, "config_error")).toBe(true);
    }
    expect(() => anthropic({ model: "m", apiKey: "k", contextWindow: 0 })).toThrow(/contextWindow/);
  });

  it("refuses, when created, a maxTokens that leaves no room in the window", async () => {
    server = await startMessagesServer({ script: [reply.text("never")] });
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
    const workspace = await LocalWorkspace.open(await createTestRepo());
    const problem = /maxTokens \(8192\) must be below the context window \(4000 tokens\)/;
    expect(() => startRun({ vision: "x", workspace, model, tools: [], contextWindow: 4_000 })).toThrow(problem);
    expect(() => startTask({ vision: "x", workspace, model, contextWindow: 4_000 })).toThrow(problem);
    // The tool loop checks it too, for hosts that drive runConversation themselves.
    const context = new ContextTracker(model, { contextWindow: 4_000 });
    await expect(context.beforeRequest({ system: "s", messages: [{ role: "user", content: "hi" }], tools: [], maxTokens: 4_000 })).rejects.toMatchObject({ code: "config_error" });
    expect(server.requests).toHaveLength(0);
  });

  it("uses the model's window by default, 1M with the 1M context beta header", () => {
    expect(new ContextTracker(anthropic({ model: "m", apiKey: "k" })).contextWindow).toBe(200_000);
    expect(new ContextTracker(anthropic({ model: "m", apiKey: "k", headers: { "anthropic-beta": "context-1m-2025-08-07" } })).contextWindow).toBe(1_000_000);
    expect(new ContextTracker(anthropic({ model: "m", apiKey: "k" }), { contextWindow: 50_000 }).contextWindow).toBe(50_000);
  });
});

/** Files big enough that a few reads fill a small window. */
function bigFiles(count: number): Record<string, string> {
  const files: Record<string, string> = { "README.md": "# app\n" };
  for (let i = 0; i < count; i++) files[`src/mod${i}.ts`] = Array.from({ length: 120 }, (_, line) => `export const value${i}_${line} = ${line}; // filler`).join("\n");
  return files;
}

const usageTotal = (r: RecordedRequest) => r.usage!.input_tokens + r.usage!.cache_creation_input_tokens + r.usage!.cache_read_input_tokens;

describe("context management in a run (offline server, real SDK)", () => {
  it("prunes a long thinking tool loop to fit a small window, keeps every request valid, and reports it", async () => {
    const reads = 14;
    const policy: ReplyPolicy = (_request, { index }) => {
      if (index >= reads) return reply.text("Read every module.");
      // Long thinking makes the assistant turns themselves weigh, so clearing results is not enough.
      const thinking = index % 3 === 2 ? reply.redactedThinking() : reply.thinking(`Module ${index} is next; read it. ${"Weighing the options. ".repeat(80)}`);
      return reply.blocks(thinking, reply.toolUseBlock("read_file", { path: `src/mod${index}.ts` }));
    };
    server = await startMessagesServer({ policy });
    const workspace = await LocalWorkspace.open(await createTestRepo(bigFiles(reads)));
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { maxRetries: 0 } });
    const contextWindow = 12_000;
    const run = startRun({ vision: "Read every module", workspace, model, tools: builtinTools(), thinking: { budgetTokens: 1024 }, maxTokens: 2048, contextWindow, context: { keepTurns: 3 } });
    const events: KeenEvent[] = [];
    for await (const event of run) events.push(event);
    const result = await run.result;

    expect(result.status).toBe("success");
    expect(result.summary).toBe("Read every module.");
    // Every request was accepted: pairing, signatures, unchanged thinking turns, loop thinking kept.
    expect(server.requests.filter((r) => r.status !== 200)).toEqual([]);
    const messagesRequests = server.requests.filter((r) => r.path === "/v1/messages");
    expect(messagesRequests).toHaveLength(reads + 1);

    const pruned = ofType(events, "context.pruned");
    expect(pruned.length).toBeGreaterThanOrEqual(1);
    const threshold = Math.min(0.8 * contextWindow, contextWindow - 2048);
    for (const event of pruned) {
      expect(event.agentId).toBe("root");
      expect(event.tokensBefore).toBeGreaterThanOrEqual(threshold);
      expect(event.tokensAfter).toBeLessThan(event.tokensBefore);
      expect(event.tokensAfter).toBeLessThanOrEqual(0.5 * contextWindow);
      expect(event.clearedToolResults + event.compactedMessages).toBeGreaterThan(0);
    }
    // tokensAfter is the exact count from count_tokens, which saw the pruned request.
    const counts = server.requests.filter((r) => r.path === "/v1/messages/count_tokens");
    expect(counts).toHaveLength(pruned.length);
    // The request sent right after each pruning matches the numbers in its event.
    for (const event of pruned) {
      const after = messagesRequests.find((r) => r.receivedAt >= 0 && usageTotal(r) === event.tokensAfter);
      expect(after, `a request of ${event.tokensAfter} tokens`).toBeDefined();
      const placeholders = JSON.stringify(after!.body.messages).match(/tool result cleared to save context: read_file src\/mod\d+\.ts, \d+ kB/g) ?? [];
      expect(placeholders.length).toBeGreaterThanOrEqual(event.clearedToolResults > 0 ? 1 : 0);
    }
    const totalCleared = pruned.reduce((n, e) => n + e.clearedToolResults, 0);
    const totalCompacted = pruned.reduce((n, e) => n + e.compactedMessages, 0);
    const last = messagesRequests.at(-1)!;
    // Without pruning the last request would hold 1 + 2 * reads messages.
    expect(last.body.messages).toHaveLength(1 + 2 * reads - totalCompacted);
    expect(totalCleared).toBeGreaterThan(0);
    expect(totalCompacted).toBeGreaterThan(0);
    expect(JSON.stringify(last.body.messages[0])).toContain(COMPACTED_SUMMARY_HEADER);
    // Every request fits the window, and the context shrank where pruning happened.
    for (const request of messagesRequests) expect(usageTotal(request) + 2048).toBeLessThanOrEqual(contextWindow);
    // Thinking turns that are still there are byte-for-byte what the server issued (it checks), and
    // the turn in the loop still starts with its thinking block.
    const lastAssistant = last.body.messages.at(-2);
    expect(["thinking", "redacted_thinking"]).toContain(lastAssistant.content[0].type);
    // Cache breakpoints still land: the request after the first one past a pruning reads the prefix it wrote.
    const firstAfter = messagesRequests.findIndex((r) => usageTotal(r) === pruned[0]!.tokensAfter);
    const next = messagesRequests[firstAfter + 1]!;
    expect(next.usage!.cache_read_input_tokens).toBeGreaterThanOrEqual(usageTotal(messagesRequests[firstAfter]!) - 10);
  });

  it("after a pruning, the next request still reads tools, system prompt and the task from the cache", async () => {
    // Three calls a turn and four kept turns: the kept tail is longer than the API's 20-block
    // lookback, so only a breakpoint at the task itself can find the cached start.
    const policy: ReplyPolicy = (_request, { index }) =>
      index < 16 ? reply.toolUses(["read_file", { path: `src/mod${index % 4}.ts`, limit: 30 }], ["list_files", {}], ["read_file", { path: "README.md" }]) : reply.text("done");
    server = await startMessagesServer({ policy });
    const workspace = await LocalWorkspace.open(await createTestRepo(bigFiles(4)));
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { maxRetries: 0 } });
    const vision = `Survey the modules. ${"Background on the task. ".repeat(40)}`;
    const run = startRun({ vision, workspace, model, tools: builtinTools(), maxTokens: 1024, contextWindow: 8_000, context: { keepTurns: 4 } });
    const events: KeenEvent[] = [];
    for await (const event of run) events.push(event);
    expect((await run.result).status).toBe("success");
    expect(server.requests.filter((r) => r.status !== 200)).toEqual([]);
    const pruned = ofType(events, "context.pruned");
    expect(pruned.length).toBeGreaterThanOrEqual(1);
    const afterPrunings = server.requests.flatMap((r, i) => (r.path === "/v1/messages/count_tokens" ? [server!.requests[i + 1]!] : []));
    expect(afterPrunings).toHaveLength(pruned.length);
    for (const request of afterPrunings) {
      const blocks = flattenRequest(request.body);
      const task = request.body.tools.length + request.body.system.length;
      expect(blocks.length - task).toBeGreaterThan(CACHE_LOOKBACK_BLOCKS + 1);
      const stablePrefix = blocks.slice(0, task + 1).reduce((n, b) => n + b.tokens, 0);
      expect(request.usage!.cache_read_input_tokens).toBeGreaterThanOrEqual(stablePrefix);
    }
  });

  it("with summary: model, asks the model for the summary in a request of its own and counts its usage", async () => {
    const reads = 12;
    let summaries = 0;
    const policy: ReplyPolicy = (request, { index }) => {
      if (!request.tools?.length) return reply.text(`Summary ${++summaries}: read modules so far; each exports numbered values.`);
      const turn = index - summaries;
      if (turn >= reads) return reply.text("Read every module.");
      return reply.blocks(reply.thinking(`Module ${turn} next. ${"Weighing the options. ".repeat(80)}`), reply.toolUseBlock("read_file", { path: `src/mod${turn}.ts` }));
    };
    server = await startMessagesServer({ policy });
    const workspace = await LocalWorkspace.open(await createTestRepo(bigFiles(reads)));
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { maxRetries: 0 } });
    const run = startRun({ vision: "Read every module", workspace, model, tools: builtinTools(), thinking: { budgetTokens: 1024 }, maxTokens: 2048, contextWindow: 12_000, context: { keepTurns: 3, summary: "model" } });
    const events: KeenEvent[] = [];
    for await (const event of run) events.push(event);
    const result = await run.result;
    expect(result.status).toBe("success");
    expect(server.requests.filter((r) => r.status !== 200)).toEqual([]);

    const compactions = ofType(events, "context.pruned").filter((e) => e.compactedMessages > 0);
    expect(compactions.length).toBeGreaterThanOrEqual(1);
    expect(summaries).toBe(compactions.length);
    const summaryRequests = server.requests.filter((r) => r.path === "/v1/messages" && !r.body.tools?.length);
    expect(summaryRequests).toHaveLength(summaries);
    // The summary request holds the task and the compacted turns as text, and nothing else.
    const first = summaryRequests[0]!.body;
    expect(first.thinking).toBeUndefined();
    expect(first.messages).toHaveLength(1);
    expect(first.messages[0].content[0].text).toMatch(/^TASK: Read every module/);
    expect(first.messages[0].content[0].text).toContain('AGENT CALLS read_file {"path":"src/mod0.ts"}');
    // The second summary request sees the first summary.
    expect(summaryRequests.length).toBeGreaterThanOrEqual(2);
    expect(summaryRequests[1]!.body.messages[0].content[0].text).toContain("EARLIER SUMMARY: [Earlier conversation compacted");
    // The conversation carries the model's words, and the usage of those requests is counted.
    const last = server.requests.at(-1)!.body;
    expect(last.messages[0].content[1].text).toBe(
      `${COMPACTED_SUMMARY_HEADER}\nSummary of what happened before the turns that follow:\nSummary ${summaries}: read modules so far; each exports numbered values.`,
    );
    const usageEvents = ofType(events, "model.usage");
    expect(usageEvents).toHaveLength(reads + 1 + summaries);
    expect(result.usage.outputTokens).toBe(usageEvents.reduce((n, e) => n + e.usage.outputTokens, 0));
  });

  it("works from estimates alone with a model that cannot count tokens", async () => {
    const policy: ReplyPolicy = (_request, { index }) => (index < 12 ? reply.toolUse("read_file", { path: `src/mod${index % 6}.ts` }) : reply.text("ok"));
    server = await startMessagesServer({ policy });
    const workspace = await LocalWorkspace.open(await createTestRepo(bigFiles(6)));
    const inner = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
    // Another provider: streaming only, no countTokens.
    const model: Model = { id: "other:model", contextWindow: 9_000, stream: (request, options) => inner.stream(request, options) };
    const run = startRun({ vision: "Read", workspace, model, tools: builtinTools(), maxTokens: 1024 });
    const events: KeenEvent[] = [];
    for await (const event of run) events.push(event);
    expect((await run.result).status).toBe("success");
    expect(server.requests.filter((r) => r.status !== 200)).toEqual([]);
    expect(server.requests.some((r) => r.path === "/v1/messages/count_tokens")).toBe(false);
    const pruned = ofType(events, "context.pruned");
    expect(pruned.length).toBeGreaterThanOrEqual(1);
    for (const event of pruned) {
      // The request that followed: the estimate is calibrated on real usage, so it is close.
      const next = events.find((e): e is KeenEventOf<"model.usage"> => e.type === "model.usage" && e.seq > event.seq)!;
      const actual = next.usage.inputTokens + next.usage.cacheCreationInputTokens + next.usage.cacheReadInputTokens;
      expect(Math.abs(event.tokensAfter - actual) / actual).toBeLessThan(0.1);
      expect(actual + 1024).toBeLessThanOrEqual(9_000);
    }
  });

  it("never prunes with context: false, and lets the window be exceeded", async () => {
    const policy: ReplyPolicy = (_request, { index }) => (index < 4 ? reply.toolUse("read_file", { path: `src/mod${index}.ts` }) : reply.text("ok"));
    server = await startMessagesServer({ policy });
    const workspace = await LocalWorkspace.open(await createTestRepo(bigFiles(4)));
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, contextWindow: 4_000 });
    const run = startRun({ vision: "Read", workspace, model, tools: builtinTools(), maxTokens: 512, context: false });
    const events: KeenEvent[] = [];
    for await (const event of run) events.push(event);
    expect((await run.result).status).toBe("success");
    expect(ofType(events, "context.pruned")).toEqual([]);
    expect(usageTotal(server.requests.at(-1)!)).toBeGreaterThan(4_000);
  });
});

describe("offline server checks that pruning relies on", () => {
  it("rejects a changed thinking turn and a loop turn stripped of its thinking", async () => {
    server = await startMessagesServer({ script: [reply.blocks(reply.thinking("plan"), reply.textBlock("note"), reply.toolUseBlock("read_file", { path: "a" })), reply.text("x"), reply.text("y"), reply.text("z")] });
    const base = { model: "m", max_tokens: 2048, thinking: { type: "enabled", budget_tokens: 1024 } };
    const post = (body: unknown) =>
      fetch(`${server!.url}/v1/messages`, { method: "POST", headers: { "x-api-key": "k", "content-type": "application/json" }, body: JSON.stringify(body) });
    const first = (await (await post({ ...base, messages: [{ role: "user", content: "go" }] })).json()) as { content: any[] };
    const answer = { role: "user", content: [{ type: "tool_result", tool_use_id: first.content[2].id, content: "data" }] };

    const edited = { role: "assistant", content: [first.content[0], { type: "text", text: "edited" }, first.content[2]] };
    const editedResponse = await post({ ...base, messages: [{ role: "user", content: "go" }, edited, answer] });
    expect(editedResponse.status).toBe(400);
    expect(await editedResponse.text()).toMatch(/assistant turn with thinking blocks was changed/);

    const stripped = { role: "assistant", content: first.content.slice(1) };
    const strippedResponse = await post({ ...base, messages: [{ role: "user", content: "go" }, stripped, answer] });
    expect(strippedResponse.status).toBe(400);
    expect(await strippedResponse.text()).toMatch(/must start with a thinking block/);

    const emptyText = await post({ ...base, messages: [{ role: "user", content: [{ type: "text", text: "" }] }] });
    expect(emptyText.status).toBe(400);

    const intact = await post({ ...base, messages: [{ role: "user", content: "go" }, { role: "assistant", content: first.content }, answer] });
    expect(intact.status).toBe(200);
  });
});
