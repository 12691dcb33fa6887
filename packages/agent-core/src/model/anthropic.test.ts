import { afterEach, describe, expect, it } from "vitest";
import { reply, startMessagesServer, type MessagesServer, type ScriptedReply } from "../testing/index.js";
import { anthropic } from "./anthropic.js";
import { collectResponse, type ModelRequest, type ModelStreamEvent } from "./model.js";

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

  it("gives up after the configured number of retries with a typed error", async () => {
    const model = await modelFor([reply.error(529), reply.error(529), reply.error(529)], { ...fastRetry, maxRetries: 2 });
    const parts: ModelStreamEvent[] = [];
    const error = await (async () => {
      for await (const part of model.stream(request)) parts.push(part);
    })().catch((e) => e);
    expect(error).toMatchObject({ code: "model_error", status: 529, retryable: true });
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
});
