import { afterEach, describe, expect, it } from "vitest";
import type { KeenEvent, KeenEventOf } from "../events.js";
import { anthropic } from "../model/anthropic.js";
import { KeenError } from "../errors.js";
import type { Message, ModelRequest, ToolResultBlock, ToolUseBlock } from "../model/model.js";
import { flattenRequest } from "../testing/prompt-cache.js";
import { reply, startMessagesServer, type MessagesServer, type RecordedRequest, type ReplyPolicy } from "../testing/index.js";
import { builtinTools } from "../tools/index.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo } from "../workspace/test-repo.js";
import { ContextTracker } from "./context.js";
import { capToolResults, runConversation, type RequestEstimate } from "./conversation.js";
import { startRun, type RunOptions } from "./start-run.js";

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const ofType = <T extends KeenEvent["type"]>(events: KeenEvent[], type: T) => events.filter((e): e is KeenEventOf<T> => e.type === type);
const inputOf = (r: RecordedRequest) => r.usage!.input_tokens + r.usage!.cache_creation_input_tokens + r.usage!.cache_read_input_tokens;

/** A text file of about `bytes` bytes, in numbered 80-character lines. */
function bigText(bytes: number, tag: string): string {
  const lines: string[] = [];
  for (let n = 1; lines.length * 80 < bytes; n++) lines.push(`${tag} line ${String(n).padStart(6, "0")} ${"x".repeat(80 - tag.length - 18)}`);
  return `${lines.join("\n")}\n`;
}

async function runWith(policy: ReplyPolicy, files: Record<string, string>, options: Partial<RunOptions> & { contextWindow?: number } = {}) {
  server = await startMessagesServer({ policy });
  const workspace = await LocalWorkspace.open(await createTestRepo({ "README.md": "# app\n", ...files }));
  const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { maxRetries: 0 } });
  const run = startRun({ vision: "Read the files", workspace, model, tools: builtinTools(), ...options });
  const events: KeenEvent[] = [];
  for await (const event of run) events.push(event);
  const messages = server.requests.filter((r) => r.path === "/v1/messages");
  return { result: await run.result, events, messages };
}

describe("one turn's tool output against the context window", () => {
  it("five parallel read_file calls on 200 KB files at a 200k window: the next request fits, each cut result says how to read on", async () => {
    const files = Object.fromEntries(Array.from({ length: 5 }, (_, i) => [`big/f${i}.txt`, bigText(200 * 1024, `f${i}`)]));
    const policy: ReplyPolicy = (_request, { index }) =>
      index === 0 ? reply.toolUses(...Object.keys(files).map((path) => ["read_file", { path }] as [string, unknown])) : reply.text("Read them.");
    const { result, messages } = await runWith(policy, files);
    expect(result.status).toBe("success");
    expect(messages).toHaveLength(2);
    const second = messages[1]!;
    expect(second.status).toBe(200);
    // Without the cap this request held about 250k tokens.
    const threshold = Math.min(0.8 * 200_000, 200_000 - 8192);
    expect(inputOf(second)).toBeLessThan(threshold);
    expect(inputOf(second) + second.body.max_tokens).toBeLessThanOrEqual(200_000);
    const results = second.body.messages[2].content as ToolResultBlock[];
    expect(results).toHaveLength(5);
    for (const [i, block] of results.entries()) {
      const text = block.content as string;
      const note = text.match(/\[Output cut to fit the context window: this shows the first (\d+) of (\d+) characters\. Read on with read_file \{ path: "big\/f(\d)\.txt", offset: (\d+) \} and a limit of lines\.\]$/);
      expect(note, text.slice(-300)).not.toBeNull();
      expect(Number(note![3])).toBe(i);
      // The last line shown is the one before the offset, and it is shown whole.
      const offset = Number(note![4]);
      const shown = text.slice(0, text.lastIndexOf("[Output cut"));
      expect(shown).toMatch(new RegExp(`^\\s*${offset - 1}\\tf${i} line ${String(offset - 1).padStart(6, "0")} x+\\n$`, "m"));
      expect(shown).not.toContain(`f${i} line ${String(offset).padStart(6, "0")}`);
    }
  });

  it("with a 20k window and 8k-token reads, pruning gets under the threshold every time, leaves room for the answer, and stays cached", async () => {
    const reads = 24;
    const files = Object.fromEntries(Array.from({ length: reads }, (_, i) => [`src/part${i}.txt`, bigText(32 * 1024, `p${i}`)]));
    const policy: ReplyPolicy = (_request, { index }) => (index < reads ? reply.toolUse("read_file", { path: `src/part${index}.txt` }) : reply.text("Read every part."));
    const contextWindow = 20_000;
    const maxTokens = 4096;
    const { result, events, messages } = await runWith(policy, files, { contextWindow, maxTokens, maxTurns: reads + 2 });
    expect(result.status).toBe("success");
    expect(messages.filter((r) => r.status !== 200)).toEqual([]);
    expect(messages).toHaveLength(reads + 1);
    const threshold = Math.min(0.8 * contextWindow, contextWindow - maxTokens);
    for (const request of messages) {
      expect(inputOf(request)).toBeLessThan(threshold);
      expect(inputOf(request) + request.body.max_tokens).toBeLessThanOrEqual(contextWindow);
    }
    const pruned = ofType(events, "context.pruned");
    expect(pruned.length).toBeGreaterThan(0);
    // Pruning makes room for more than the next turn.
    expect(pruned.length).toBeLessThanOrEqual(reads / 2);
    const later = messages.slice(1);
    const cachedShare = later.reduce((n, r) => n + r.usage!.cache_read_input_tokens, 0) / later.reduce((n, r) => n + inputOf(r), 0);
    expect(cachedShare).toBeGreaterThanOrEqual(0.6);
    // Right after each pruning, the request reads from the cache everything before the earliest
    // block the pruning changed.
    const prunedRequests = server!.requests.flatMap((r, i) => (r.path === "/v1/messages/count_tokens" ? [server!.requests[i + 1]!] : []));
    expect(prunedRequests).toHaveLength(pruned.length);
    for (const request of prunedRequests) {
      const previous = messages[messages.indexOf(request) - 1]!;
      const [now, then] = [flattenRequest(request.body), flattenRequest(previous.body)];
      let unchanged = 0;
      while (unchanged < now.length && now[unchanged]!.prefixHash === then[unchanged]?.prefixHash) unchanged++;
      expect(unchanged).toBeGreaterThan(request.body.tools.length + 1);
      const unchangedTokens = now.slice(0, unchanged).reduce((n, b) => n + b.tokens, 0);
      expect(request.usage!.cache_read_input_tokens).toBe(unchangedTokens);
    }
  });
});

describe("capToolResults", () => {
  const call = (id: string, name: string, input: unknown): ToolUseBlock => ({ type: "tool_use", id, name, input });
  const result = (id: string, content: string): ToolResultBlock => ({ type: "tool_result", tool_use_id: id, content });

  it("leaves results that fit alone, and cuts the largest to a common size, small ones whole", () => {
    const calls = [call("a", "run_command", { command: "make" }), call("b", "search_files", { pattern: "x" }), call("c", "list_files", {})];
    const results = [result("a", "a".repeat(40_000)), result("b", "b".repeat(400)), result("c", "c".repeat(20_000))];
    expect(capToolResults(results, calls, 20_000)).toBe(results);
    const cut = capToolResults(results, calls, 5_100);
    const texts = cut.map((r) => r.content as string);
    expect(texts[1]).toBe("b".repeat(400));
    expect(texts[0]).toMatch(/^a+\n\[Output cut to fit the context window: this shows the first \d+ of 40000 characters\. Narrow the output \(grep, head, tail\), or redirect it to a file and read that in parts\.\]$/);
    expect(texts[2]).toMatch(/of 20000 characters\. Narrow the pattern or the path to see the rest\.\]$/);
    // The two cut results got the same share, and everything together fits the budget.
    expect(Math.abs(texts[0]!.length - texts[2]!.length)).toBeLessThan(40);
    expect(texts.reduce((n, t) => n + Math.ceil(t.length / 4), 0)).toBeLessThanOrEqual(5_100);
    expect(cut.map((r) => r.tool_use_id)).toEqual(["a", "b", "c"]);
  });

  it("cuts one long line (no line break near) without splitting a character made of two UTF-16 units", () => {
    const calls = [call("a", "read_file", { path: "emoji.json", offset: 1 })];
    for (let shift = 0; shift < 2; shift++) {
      const text = `${"x".repeat(shift)}${"😀".repeat(20_000)}`;
      const [cut] = capToolResults([result("a", text)], calls, 2_000);
      const content = cut!.content as string;
      expect(content).not.toMatch(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])/);
      expect(Buffer.from(content, "utf8").toString("utf8")).toBe(content);
      expect(content).toMatch(/Read on with read_file \{ path: "emoji\.json", offset: 1 \}/);
    }
  });
});

describe("ContextTracker when the newest turns are too large", () => {
  const task = { role: "user" as const, content: "Do the work." };
  const turn = (id: string, input: unknown, result: string) => [
    { role: "assistant" as const, content: [{ type: "tool_use" as const, id, name: "write_file", input }] },
    { role: "user" as const, content: [{ type: "tool_result" as const, tool_use_id: id, content: result }] },
  ];
  async function tracker(contextWindow: number) {
    server = await startMessagesServer({ script: [] });
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
    return new ContextTracker(model, { contextWindow, keepTurns: 2 });
  }

  it("clears a kept turn's result (never the newest turn's) when the kept turns alone pass the threshold", async () => {
    const context = await tracker(20_000);
    const messages: Message[] = [task, ...turn("a", { path: "a" }, "A".repeat(40_000)), ...turn("b", { path: "b" }, "B".repeat(28_000))];
    const request = { system: "s", tools: [], messages, maxTokens: 2048 };
    const report = await context.beforeRequest(request);
    expect(report).toMatchObject({ clearedToolResults: 1, compactedMessages: 0 });
    expect(report!.tokensAfter).toBeLessThan(context.threshold(2048));
    expect(JSON.stringify(messages[2])).toMatch(/tool result cleared to save context: write_file a, 39 kB/);
    expect(messages[4]).toEqual(turn("b", { path: "b" }, "B".repeat(28_000))[1]);
    expect(request.maxTokens).toBe(2048);
  });

  it("gives the answer only the room left when the newest turn alone fills the window, and refuses when nothing is left", async () => {
    const context = await tracker(20_000);
    // The newest turn (a large tool input the model wrote) weighs about 17k tokens.
    const messages: Message[] = [task, ...turn("a", { path: "a", content: "x".repeat(68_000) }, "ok")];
    const request: ModelRequest = { system: "s", tools: [], messages, maxTokens: 4096 };
    await context.beforeRequest(request);
    const input = await anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server!.url }).countTokens!(request);
    expect(request.maxTokens).toBeLessThan(4096);
    expect(request.maxTokens).toBeGreaterThanOrEqual(1024);
    expect(input + request.maxTokens).toBeLessThanOrEqual(20_000);

    const overflowing: ModelRequest = { system: "s", tools: [], messages: [task, ...turn("b", { path: "b", content: "x".repeat(80_000) }, "ok")], maxTokens: 4096 };
    await expect(new ContextTracker(context["model"], { contextWindow: 20_000 }).beforeRequest(overflowing)).rejects.toMatchObject({ code: "context_overflow" });
  });
});

describe("usage the server spent on requests that were aborted", () => {
  it("is reported as model.usage and counted in the result, and beforeModelRequest sees each request's estimate first", async () => {
    // The second request streams slowly; the run is aborted in the middle of it.
    server = await startMessagesServer({ script: [reply.toolUse("list_files", {}), reply.slow(0, reply.text("a long answer ".repeat(80)), 15)] });
    const workspace = await LocalWorkspace.open(await createTestRepo());
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { maxRetries: 0 } });
    const estimates: RequestEstimate[] = [];
    const events: KeenEvent[] = [];
    const messages: Message[] = [{ role: "user", content: "List the files" }];
    const controller = new AbortController();
    const conversation = runConversation({
      agentId: "root",
      model,
      system: "You are a test.",
      messages,
      tools: builtinTools(),
      workspace,
      emit: (event) => events.push(event as KeenEvent),
      signal: controller.signal,
      maxTurns: 5,
      maxTokens: 1024,
      beforeModelRequest: (estimate) => {
        estimates.push(estimate);
      },
    });
    const started = Date.now();
    while (server.requests.length < 2 && Date.now() - started < 5_000) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 150));
    controller.abort();
    await expect(conversation).rejects.toMatchObject({ code: "aborted" });

    expect(estimates).toHaveLength(2);
    expect(estimates[1]!.maxOutputTokens).toBe(1024);
    expect(estimates[1]!.inputTokens).toBeGreaterThan(estimates[0]!.inputTokens);
    const usages = events.filter((e): e is Extract<KeenEvent, { type: "model.usage" }> => e.type === "model.usage");
    expect(usages.map((e) => e.stopReason)).toEqual(["tool_use", "aborted"]);
    expect(usages[1]!.model).toBe(usages[0]!.model);
    const served = server.requests[1]!.usage!;
    expect(usages[1]!.usage.inputTokens + usages[1]!.usage.cacheCreationInputTokens + usages[1]!.usage.cacheReadInputTokens).toBe(
      served.input_tokens + served.cache_creation_input_tokens + served.cache_read_input_tokens,
    );
    expect(usages[1]!.usage.outputTokens).toBeGreaterThan(1);
    expect(usages[1]!.agentTotal.outputTokens).toBe(usages[0]!.usage.outputTokens + usages[1]!.usage.outputTokens);
  });

  it("a budget check in beforeModelRequest stops before the request is sent", async () => {
    server = await startMessagesServer({ script: [reply.toolUse("list_files", {}), reply.text("never sent")] });
    const workspace = await LocalWorkspace.open(await createTestRepo());
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { maxRetries: 0 } });
    let spent = 0;
    let budget: number | undefined;
    const conversation = runConversation({
      agentId: "root",
      model,
      system: "You are a test.",
      messages: [{ role: "user", content: "List the files" }],
      tools: builtinTools(),
      workspace,
      emit: () => {},
      onUsage: (usage) => (spent += usage.inputTokens + usage.cacheCreationInputTokens + usage.cacheReadInputTokens + usage.outputTokens),
      signal: new AbortController().signal,
      maxTurns: 5,
      maxTokens: 1024,
      beforeModelRequest: ({ inputTokens, maxOutputTokens }) => {
        // Room for exactly the first request at its worst.
        budget ??= inputTokens + maxOutputTokens;
        if (spent + inputTokens + maxOutputTokens > budget) throw new KeenError("token_budget", "over budget");
      },
    });
    await expect(conversation).rejects.toMatchObject({ code: "token_budget" });
    expect(server.requests).toHaveLength(1);
  });
});
