import { afterEach, describe, expect, it } from "vitest";
import { reply, startMessagesServer, type MessagesServer, type ScriptedReply } from "../testing/index.js";
import { ModelError } from "../errors.js";
import { anthropic } from "./anthropic.js";
import { collectResponse, type AttemptUsagePart, type ModelRequest, type ModelStreamEvent } from "./model.js";
import { defaultRetryPolicy, simulatedClock } from "./retry.js";
import { seal } from "./sealed.js";

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const fastRetry = { baseDelayMs: 5, maxDelayMs: 2_000, maxRetries: 3 };
const request: ModelRequest = {
  system: "You are a test.",
  messages: [{ role: "user", content: "hello" }],
  tools: [{ name: "read_file", description: "Reads a file", inputSchema: { type: "object", properties: { path: { type: "string" } } } }],
  maxTokens: 1000,
};

async function modelFor(script: ScriptedReply[], retry: Partial<typeof fastRetry> = fastRetry) {
  server = await startMessagesServer({ script });
  return anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry });
}

async function drain(stream: AsyncIterable<ModelStreamEvent>) {
  const parts: ModelStreamEvent[] = [];
  for await (const part of stream) parts.push(part);
  return parts;
}

describe("anthropic model", () => {
  it("refuses to start without a model id or an API key", () => {
    const saved = process.env.ANTHROPIC_API_KEY;
    delete process.env.ANTHROPIC_API_KEY;
    try {
      expect(() => anthropic({ model: "claude-sonnet-5-5" })).toThrow(/no API key/);
      expect(() => anthropic({ model: "", apiKey: "k" })).toThrow(/model/);
    } finally {
      if (saved !== undefined) process.env.ANTHROPIC_API_KEY = saved;
    }
  });

  it("honours ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY", async () => {
    server = await startMessagesServer({ script: [reply.text("from env")], apiKey: "env-key" });
    const saved = { url: process.env.ANTHROPIC_BASE_URL, key: process.env.ANTHROPIC_API_KEY };
    process.env.ANTHROPIC_BASE_URL = server.url;
    process.env.ANTHROPIC_API_KEY = "env-key";
    try {
      const response = await collectResponse(anthropic({ model: "claude-sonnet-5-5" }).stream(request));
      expect(response.content).toEqual([{ type: "text", text: "from env" }]);
    } finally {
      for (const [name, value] of [["ANTHROPIC_BASE_URL", saved.url], ["ANTHROPIC_API_KEY", saved.key]] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
  });

  it("streams deltas and ends with the full response and usage", async () => {
    const model = await modelFor([reply.toolUse("read_file", { path: "a.ts" }, { text: "Let me read a.ts" })]);
    const parts = await drain(model.stream(request));
    const text = parts.flatMap((p) => (p.type === "text_delta" ? [p.text] : [])).join("");
    expect(text).toBe("Let me read a.ts");
    expect(parts.some((p) => p.type === "tool_input_delta")).toBe(true);
    const last = parts.at(-1)!;
    expect(last.type).toBe("response");
    if (last.type !== "response") return;
    expect(last.response.stopReason).toBe("tool_use");
    expect(last.response.content[1]).toMatchObject({ type: "tool_use", name: "read_file", input: { path: "a.ts" } });
    expect(last.response.usage.inputTokens + last.response.usage.cacheCreationInputTokens).toBeGreaterThan(0);
    expect(last.response.usage.outputTokens).toBeGreaterThan(0);
    expect(last.response.id).toMatch(/^req_/);
  });

  it("places at most four cache breakpoints: system, the start of the first message and the last two user turns", async () => {
    const model = await modelFor([reply.text("ok")]);
    await collectResponse(
      model.stream({
        ...request,
        messages: [
          { role: "user", content: [{ type: "text", text: "one" }, { type: "text", text: "one, more" }] },
          { role: "assistant", content: [{ type: "text", text: "two" }] },
          { role: "user", content: "three" },
          { role: "assistant", content: [{ type: "text", text: "four" }] },
          { role: "user", content: [{ type: "text", text: "five" }, { type: "text", text: "six" }] },
        ],
      }),
    );
    const body = server!.requests[0]!.body;
    const marked = JSON.stringify(body).match(/cache_control/g) ?? [];
    expect(marked).toHaveLength(4);
    expect(body.tools.some((tool: { cache_control?: unknown }) => tool.cache_control)).toBe(false);
    expect(body.system.at(-1).cache_control).toEqual({ type: "ephemeral" });
    expect(body.messages[0].content[0].cache_control).toEqual({ type: "ephemeral" });
    expect(body.messages[0].content[1].cache_control).toBeUndefined();
    expect(body.messages[2].content.at(-1).cache_control).toEqual({ type: "ephemeral" });
    expect(body.messages[4].content.at(-1).cache_control).toEqual({ type: "ephemeral" });
    expect(body.messages[4].content[0].cache_control).toBeUndefined();
  });

  for (const [label, failure] of [
    ["429 rate limit", reply.error(429)],
    ["529 overloaded", reply.error(529)],
    ["500 api error", reply.error(500)],
    ["503", reply.error(503)],
    ["a stream cut mid-way", reply.cut(3, reply.text("partial"))],
  ] as const) {
    it(`retries ${label}, reports the retry, and counts usage once`, async () => {
      const model = await modelFor([failure, reply.text("recovered")]);
      const parts = await drain(model.stream(request));
      const retries = parts.filter((p) => p.type === "retry");
      expect(retries).toHaveLength(1);
      expect(retries[0]).toMatchObject({ attempt: 1 });
      const responses = parts.filter((p) => p.type === "response");
      expect(responses).toHaveLength(1);
      expect(responses[0]!.type === "response" && responses[0]!.response.content).toEqual([{ type: "text", text: "recovered" }]);
      const served = server!.requests.filter((r) => r.status === 200);
      const final = responses[0]!.type === "response" ? responses[0]!.response.usage : undefined;
      expect(final?.outputTokens).toBe(served.at(-1)!.usage!.output_tokens);
    });
  }

  it("waits at least as long as retry-after asks", async () => {
    const model = await modelFor([reply.error(429, undefined, undefined, { retryAfter: 1 }), reply.text("ok")]);
    const parts = await drain(model.stream(request));
    const retry = parts.find((p) => p.type === "retry");
    expect(retry).toMatchObject({ delayMs: 1000, status: 429 });
    const [first, second] = server!.requests;
    expect(second!.receivedAt - first!.receivedAt).toBeGreaterThanOrEqual(990);
  });

  it("gives up after the configured number of retries with a model_unavailable error", async () => {
    const model = await modelFor([reply.error(529), reply.error(529), reply.error(529)], { ...fastRetry, maxRetries: 2 });
    const parts: ModelStreamEvent[] = [];
    const error = await (async () => {
      for await (const part of model.stream(request)) parts.push(part);
    })().catch((e) => e);
    expect(error).toMatchObject({ code: "model_unavailable", status: 529, retryable: true });
    expect(error).toBeInstanceOf(ModelError);
    expect(error.message).toMatch(/gave up after 3 attempts/);
    expect(parts.filter((p) => p.type === "retry")).toHaveLength(2);
    expect(server!.requests).toHaveLength(3);
  });

  it("does not retry a 400 or a 401", async () => {
    for (const failure of [reply.error(400, "invalid_request_error", "nope"), reply.error(401)]) {
      const model = await modelFor([failure, reply.text("never")]);
      await expect(collectResponse(model.stream(request))).rejects.toMatchObject({ code: "model_error", retryable: false });
      expect(server!.requests).toHaveLength(1);
      await server!.close();
      server = undefined;
    }
  });

  it("stops promptly when aborted mid-stream", async () => {
    const model = await modelFor([reply.slow(0, reply.text("a long answer ".repeat(50)), 200)]);
    const controller = new AbortController();
    const started = Date.now();
    setTimeout(() => controller.abort(), 300);
    await expect(collectResponse(model.stream(request, { signal: controller.signal }))).rejects.toMatchObject({ code: "aborted" });
    expect(Date.now() - started).toBeLessThan(1300);
  });

  it("stops promptly when aborted during a retry wait", async () => {
    const model = await modelFor([reply.error(429, undefined, undefined, { retryAfter: 30 }), reply.text("late")], { ...fastRetry, maxDelayMs: 60_000 });
    const controller = new AbortController();
    const started = Date.now();
    setTimeout(() => controller.abort(), 200);
    await expect(collectResponse(model.stream(request, { signal: controller.signal }))).rejects.toMatchObject({ code: "aborted" });
    expect(Date.now() - started).toBeLessThan(1200);
  });

  it("by default rides out a minute of overload (on a simulated clock), then answers", async () => {
    const clock = simulatedClock();
    // Overloaded for the first minute of simulated time; the shortest jitter makes the most attempts.
    server = await startMessagesServer({ policy: () => (clock.now() < 60_000 ? reply.error(529) : reply.text("back")) });
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { now: clock.now, sleep: clock.sleep, random: () => 0 } });
    const parts = await drain(model.stream(request));
    const retries = parts.filter((p) => p.type === "retry");
    expect(parts.at(-1)).toMatchObject({ type: "response", response: { content: [{ type: "text", text: "back" }] } });
    expect(retries.length).toBeGreaterThan(5);
    expect(retries.length).toBeLessThanOrEqual(defaultRetryPolicy.maxRetries);
    expect(clock.now()).toBeGreaterThanOrEqual(60_000);
    expect(clock.now()).toBeLessThanOrEqual(defaultRetryPolicy.maxRetryTimeMs);
  });

  it("gives up on endless overload within the total retry time, with a model_unavailable error", async () => {
    const clock = simulatedClock();
    server = await startMessagesServer({ policy: () => reply.error(529) });
    const model = anthropic({
      model: "claude-sonnet-5-5",
      apiKey: "test",
      baseURL: server.url,
      retry: { now: clock.now, sleep: clock.sleep, maxRetries: 1_000, maxRetryTimeMs: 90_000, random: () => 1 },
    });
    const error = await collectResponse(model.stream(request)).catch((e) => e);
    expect(error).toMatchObject({ code: "model_unavailable", status: 529, retryable: true, name: "ModelUnavailableError" });
    expect(error.message).toMatch(/529 overloaded_error.*gave up after \d+ attempts/);
    // No wait was started that would have ended past the limit.
    expect(clock.now()).toBeLessThanOrEqual(90_000);
    expect(clock.now()).toBeGreaterThan(60_000);
    expect(server!.requests.length).toBeLessThan(20);
  });

  it("reports an unreachable server as model_unavailable once retries are spent, and a bad request as model_error", async () => {
    server = await startMessagesServer({ script: [] });
    const url = server.url;
    await server.close();
    server = undefined;
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: url, retry: { ...fastRetry, maxRetries: 2 } });
    const unreachable = await collectResponse(model.stream(request)).catch((e) => e);
    expect(unreachable).toMatchObject({ code: "model_unavailable", retryable: true });
    expect(unreachable.message).toMatch(/connection error.*gave up after 3 attempts/);
    const invalid = await (await modelFor([reply.error(400, "invalid_request_error", "prompt is too long")])).stream(request);
    await expect(collectResponse(invalid)).rejects.toMatchObject({ code: "model_error", status: 400, retryable: false });
  });

  it("refuses a nonsensical retry policy with a ConfigError", () => {
    expect(() => anthropic({ model: "m", apiKey: "k", retry: { maxRetries: -1 } })).toThrow(expect.objectContaining({ code: "config_error" }));
    expect(() => anthropic({ model: "m", apiKey: "k", retry: { maxRetryTimeMs: Number.NaN } })).toThrow(/maxRetryTimeMs/);
    expect(() => anthropic({ model: "m", apiKey: "k", retry: { maxRetries: 1.5 } })).toThrow(/integer/);
  });

  it("reports the server's usage of a request aborted mid-stream", async () => {
    const model = await modelFor([reply.slow(0, reply.text("a long answer ".repeat(50)), 20)]);
    const controller = new AbortController();
    const parts: ModelStreamEvent[] = [];
    const error = await (async () => {
      for await (const part of model.stream(request, { signal: controller.signal })) {
        parts.push(part);
        if (parts.filter((p) => p.type === "text_delta").length === 3) controller.abort();
      }
    })().catch((e) => e);
    expect(error).toMatchObject({ code: "aborted" });
    const lost = parts.filter((p): p is AttemptUsagePart => p.type === "attempt_usage");
    expect(lost).toHaveLength(1);
    const served = server!.requests[0]!.usage!;
    expect(lost[0]).toMatchObject({ outcome: "aborted", estimated: false, requestId: expect.stringMatching(/^req_/) });
    // Input as the server counted it; output at least what streamed before the abort.
    expect(lost[0]!.usage).toMatchObject({ inputTokens: served.input_tokens, cacheCreationInputTokens: served.cache_creation_input_tokens, cacheReadInputTokens: served.cache_read_input_tokens });
    const streamed = parts.flatMap((p) => (p.type === "text_delta" ? [p.text] : [])).join("");
    expect(lost[0]!.usage.outputTokens).toBeGreaterThanOrEqual(Math.ceil(streamed.length / 4));
  });

  it("counts what was sent for a request aborted before the server answered", async () => {
    const model = await modelFor([reply.slow(2_000, reply.text("late"))]);
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    const parts: ModelStreamEvent[] = [];
    await expect(
      (async () => {
        for await (const part of model.stream(request, { signal: controller.signal })) parts.push(part);
      })(),
    ).rejects.toMatchObject({ code: "aborted" });
    expect(parts).toEqual([{ type: "attempt_usage", outcome: "aborted", estimated: true, model: "claude-sonnet-5-5", usage: { inputTokens: expect.any(Number), outputTokens: 0, cacheCreationInputTokens: 0, cacheReadInputTokens: 0 } }]);
    const sent = (parts[0] as AttemptUsagePart).usage.inputTokens;
    expect(sent).toBeGreaterThan(0);
    // The estimate is of the request that went out.
    const counted = await anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server!.url }).countTokens!(request);
    expect(Math.abs(sent - counted) / counted).toBeLessThan(0.5);
  });

  it("reports the usage of a stream that broke after it started, before retrying", async () => {
    // Events spaced out so the ones before the cut reach the client.
    const model = await modelFor([reply.slow(0, reply.cut(6, reply.text("partial answer that breaks")), 5), reply.text("recovered")]);
    const parts = await drain(model.stream(request));
    const kinds = parts.filter((p) => p.type === "attempt_usage" || p.type === "retry" || p.type === "response").map((p) => p.type);
    expect(kinds).toEqual(["attempt_usage", "retry", "response"]);
    const lost = parts[parts.findIndex((p) => p.type === "attempt_usage")] as AttemptUsagePart;
    expect(lost).toMatchObject({ outcome: "retried", estimated: false });
    expect(lost.usage.inputTokens + lost.usage.cacheCreationInputTokens).toBe(server!.requests[0]!.usage!.input_tokens + server!.requests[0]!.usage!.cache_creation_input_tokens);
  });

  it("marks breakpoints per request: a recorded conversation sent again and again carries only each request's own marks", async () => {
    const model = await modelFor([reply.text("one"), reply.text("two"), reply.text("three")]);
    const conversation: ModelRequest["messages"] = [seal({ role: "user", content: "task" })];
    const turn = (i: number) => {
      conversation.push(seal({ role: "assistant", content: [{ type: "tool_use", id: `t${i}`, name: "read_file", input: { path: `f${i}` } }] }));
      conversation.push(seal({ role: "user", content: [{ type: "tool_result", tool_use_id: `t${i}`, content: `file ${i}` }] }));
    };
    const recorded = () => JSON.stringify(conversation);
    for (let i = 1; i <= 3; i++) {
      turn(i);
      const before = recorded();
      // The third request names a block of its own, which covers the task's prefix: the task's mark goes.
      await collectResponse(model.stream({ ...request, messages: conversation, ...(i === 3 ? { cacheBreakpoints: [{ message: 1, block: 0 }] } : {}) }));
      expect(recorded()).toBe(before);
    }
    const marks = server!.requests.map((r) => r.body.messages.flatMap((m: any, i: number) => m.content.flatMap((b: any, j: number) => (b.cache_control ? [`${i}.${j}`] : []))));
    expect(marks).toEqual([
      ["0.0", "2.0"],
      ["0.0", "2.0", "4.0"],
      ["1.0", "4.0", "6.0"],
    ]);
    // The marked blocks went out whole.
    expect(server!.requests[2]!.body.messages[6].content[0]).toEqual({ type: "tool_result", tool_use_id: "t3", content: "file 3", cache_control: { type: "ephemeral" } });
  });

  it("gives toParams' caller parameters of its own: changing them changes no later request", async () => {
    const model = await modelFor([reply.text("ok")]);
    const messages: ModelRequest["messages"] = [
      seal({ role: "user", content: [{ type: "text", text: "task" }] }),
      seal({ role: "assistant", content: [{ type: "tool_use", id: "a", name: "read_file", input: { path: "x" } }] }),
      seal({ role: "user", content: [{ type: "tool_result", tool_use_id: "a", content: "one" }] }),
    ];
    const tools = [seal({ ...request.tools[0]! })];
    const params = (model as unknown as { toParams(r: ModelRequest): any }).toParams({ ...request, tools, messages });
    for (const message of params.messages) {
      for (const block of message.content) Object.assign(block, { text: "changed", content: "changed", input: { path: "changed" } });
      message.content.push({ type: "text", text: "added" });
    }
    params.tools.forEach((tool: any) => Object.assign(tool, { description: "changed", input_schema: { type: "object", properties: { changed: {} } } }));
    await collectResponse(model.stream({ ...request, tools, messages }));
    const sent = JSON.stringify(server!.requests[0]!.body);
    // A host's own message holding what JSON has no form for: the parameters hold what is sent, and nothing throws.
    const at = new Date(0);
    const hosts = [{ role: "user" as const, content: [{ type: "tool_result" as const, tool_use_id: "a", content: "x", extra: { at, format: () => "x" } } as never] }];
    expect((model as unknown as { toParams(r: ModelRequest): any }).toParams({ ...request, messages: hosts }).messages[0].content[0].extra).toEqual({ at: at.toJSON() });
    expect(sent).not.toContain("changed");
    expect(sent).not.toContain("added");
    expect(server!.requests[0]!.body.messages[2].content[0]).toMatchObject({ type: "tool_result", tool_use_id: "a", content: "one" });
  });

  it("sends a recorded message as it was recorded, thinking signatures and unusual text included", async () => {
    const odd = "lone \ud800 surrogate, \u2028 line separator, \"quotes\", tab\t, emoji 🐝";
    const input = { path: "a.txt", content: odd, nested: { list: [1, -0, 1e21, 0.1, null, true], deep: { x: "y" } } };
    const model = await modelFor([reply.blocks(reply.thinking(`thinking ${odd}`), reply.toolUseBlock("write_file", input)), reply.text("ok"), reply.text("ok")]);
    const thinking = { budgetTokens: 1024 };
    const first = await collectResponse(model.stream({ ...request, maxTokens: 2048, thinking, messages: [{ role: "user", content: odd }] }));
    const call = first.content.find((b) => b.type === "tool_use")!;
    const messages: ModelRequest["messages"] = [
      seal({ role: "user", content: odd }),
      seal({ role: "assistant", content: first.content }),
      seal({ role: "user", content: [{ type: "tool_result", tool_use_id: call.id, content: odd, is_error: true }] }),
    ];
    // Sent twice: the second request is built from the forms the first one made. The server
    // refuses a thinking turn that is not byte for byte as it issued it.
    for (let i = 0; i < 2; i++) await collectResponse(model.stream({ ...request, maxTokens: 2048, thinking, messages }));
    for (const sent of server!.requests.slice(1)) {
      const bodies = sent.body.messages.map((m: any) => ({ ...m, content: m.content.map(({ cache_control: _, ...block }: any) => block) }));
      expect(bodies[0]).toEqual({ role: "user", content: [{ type: "text", text: odd }] });
      expect(bodies.slice(1)).toEqual(JSON.parse(JSON.stringify(messages.slice(1))));
      expect(bodies[1].content[1].input.content).toBe(odd);
    }
  });

  it("puts named cache breakpoints before the task and the second-newest turn, never more than four", async () => {
    const model = await modelFor([reply.text("ok")]);
    const messages: ModelRequest["messages"] = [
      { role: "user", content: [{ type: "text", text: "task" }] },
      { role: "assistant", content: [{ type: "thinking", thinking: "t", signature: "s" }, { type: "tool_use", id: "a", name: "read_file", input: {} }] },
      { role: "user", content: [{ type: "tool_result", tool_use_id: "a", content: "one" }] },
      { role: "assistant", content: [{ type: "tool_use", id: "b", name: "read_file", input: {} }] },
      { role: "user", content: [{ type: "tool_result", tool_use_id: "b", content: "two" }] },
      { role: "assistant", content: [{ type: "text", text: "three" }] },
      { role: "user", content: "four" },
    ];
    const body = (model as unknown as { toParams(r: ModelRequest): any }).toParams({
      ...request,
      messages,
      // A thinking block cannot carry a breakpoint: the nearest block before it that can takes it.
      cacheBreakpoints: [{ message: 3, block: 0 }, { message: 2, block: 0 }, { message: 99, block: 0 }],
    });
    const marks = body.messages.flatMap((m: any, i: number) => m.content.flatMap((b: any, j: number) => (b.cache_control ? [`${i}.${j}`] : [])));
    expect(marks).toEqual(["2.0", "3.0", "6.0"]);
    const plain = (model as unknown as { toParams(r: ModelRequest): any }).toParams({ ...request, messages, cacheBreakpoints: [{ message: 1, block: 0 }] });
    const plainMarks = plain.messages.flatMap((m: any, i: number) => m.content.flatMap((b: any, j: number) => (b.cache_control ? [`${i}.${j}`] : [])));
    // message 1 block 0 is thinking: the task block before it is named; then the second-newest user turn.
    expect(plainMarks).toEqual(["0.0", "4.0", "6.0"]);
    // The marks are the requests' own: the caller's messages are left as they were.
    expect(JSON.stringify(messages)).not.toContain("cache_control");
  });
});
