import Anthropic from "@anthropic-ai/sdk";
import { afterEach, describe, expect, it, onTestFinished, vi } from "vitest";
import { startMessagesServer, type MessagesServer, type MessagesServerOptions } from "./messages-server.js";
import { minCacheableTokens } from "./prompt-cache.js";
import { reply } from "./replies.js";

const MODEL = "claude-sonnet-5-5";
let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function start(options: MessagesServerOptions) {
  server = await startMessagesServer(options);
  return { server, client: new Anthropic({ apiKey: "test", baseURL: server.url, maxRetries: 0 }) };
}

const user = (content: string): Anthropic.MessageParam => ({ role: "user", content });

describe("offline Messages API server, through the real SDK", () => {
  it("answers a non-streaming request with a complete message", async () => {
    const { client, server } = await start({ script: [reply.text("Hello there")] });
    const message = await client.messages.create({ model: MODEL, max_tokens: 100, messages: [user("hi")] });
    expect(message.content).toEqual([{ type: "text", text: "Hello there" }]);
    expect(message.stop_reason).toBe("end_turn");
    expect(message.model).toBe(MODEL);
    expect(message.usage.input_tokens).toBeGreaterThan(0);
    expect(server.requests[0]!.body.messages).toEqual([{ role: "user", content: "hi" }]);
  });

  it("streams text, tool input JSON, thinking and signatures that the SDK assembles", async () => {
    const { client } = await start({
      script: [reply.blocks(reply.thinking("Let me look at the file first."), reply.textBlock("Reading it now."), reply.toolUseBlock("read_file", { path: "src/a very long path/file.ts", offset: 10 }))],
    });
    const texts: string[] = [];
    const jsonParts: string[] = [];
    const eventTypes = new Set<string>();
    const stream = client.messages.stream({ model: MODEL, max_tokens: 4000, thinking: { type: "enabled", budget_tokens: 2000 }, messages: [user("go")] });
    stream.on("text", (delta) => texts.push(delta));
    stream.on("inputJson", (partial) => jsonParts.push(partial));
    stream.on("streamEvent", (event) => {
      eventTypes.add(event.type === "content_block_delta" ? event.delta.type : event.type);
    });
    const message = await stream.finalMessage();
    expect(message.stop_reason).toBe("tool_use");
    expect(message.content[0]).toMatchObject({ type: "thinking", thinking: "Let me look at the file first." });
    expect((message.content[0] as Anthropic.ThinkingBlock).signature.length).toBeGreaterThan(10);
    expect(message.content[2]).toMatchObject({ type: "tool_use", name: "read_file", input: { path: "src/a very long path/file.ts", offset: 10 } });
    expect(texts.join("")).toBe("Reading it now.");
    expect(jsonParts.length).toBeGreaterThan(2);
    for (const type of ["message_start", "content_block_start", "text_delta", "thinking_delta", "signature_delta", "input_json_delta", "content_block_stop", "message_delta", "message_stop"]) {
      expect(eventTypes, type).toContain(type);
    }
  });

  it("frames SSE like the API, pings included", async () => {
    const { server } = await start({ script: [reply.text("hi")] });
    const response = await fetch(`${server.url}/v1/messages`, {
      method: "POST",
      headers: { "x-api-key": "k", "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, max_tokens: 10, stream: true, messages: [user("x")] }),
    });
    expect(response.headers.get("content-type")).toBe("text/event-stream");
    expect(response.headers.get("request-id")).toMatch(/^req_/);
    const text = await response.text();
    const names = [...text.matchAll(/^event: (\w+)$/gm)].map((m) => m[1]);
    expect(names).toEqual(["message_start", "content_block_start", "content_block_delta", "content_block_stop", "ping", "message_delta", "message_stop"]);
    for (const frame of text.trim().split("\n\n")) expect(frame).toMatch(/^event: \w+\ndata: \{.*\}$/);
  });

  it("runs a multi-turn tool loop and checks tool_result ids", async () => {
    const { client } = await start({ script: [reply.toolUse("get_time", {}), reply.text("It is noon."), reply.text("unused")] });
    const tools: Anthropic.Tool[] = [{ name: "get_time", description: "time", input_schema: { type: "object", properties: {} } }];
    const first = await client.messages.create({ model: MODEL, max_tokens: 100, tools, messages: [user("time?")] });
    const call = first.content.find((b) => b.type === "tool_use") as Anthropic.ToolUseBlock;
    const messages: Anthropic.MessageParam[] = [user("time?"), { role: "assistant", content: first.content }];
    const second = await client.messages.create({
      model: MODEL,
      max_tokens: 100,
      tools,
      messages: [...messages, { role: "user", content: [{ type: "tool_result", tool_use_id: call.id, content: "12:00" }] }],
    });
    expect(second.content).toEqual([{ type: "text", text: "It is noon." }]);
    await expect(
      client.messages.create({ model: MODEL, max_tokens: 100, tools, messages: [...messages, { role: "user", content: [{ type: "tool_result", tool_use_id: "toolu_wrong", content: "x" }] }] }),
    ).rejects.toBeInstanceOf(Anthropic.BadRequestError);
  });

  it("maps each error to the SDK's typed errors, with retry-after", async () => {
    const { client } = await start({
      script: [reply.error(429, undefined, undefined, { retryAfter: 7 }), reply.error(529), reply.error(500), reply.error(401), reply.error(400, "invalid_request_error", "bad thing")],
    });
    const call = () => client.messages.create({ model: MODEL, max_tokens: 10, messages: [user("x")] });
    const rateLimited = await call().catch((e) => e);
    expect(rateLimited).toBeInstanceOf(Anthropic.RateLimitError);
    expect(rateLimited.headers.get("retry-after")).toBe("7");
    expect(rateLimited.error).toMatchObject({ type: "error", error: { type: "rate_limit_error" } });
    const overloaded = await call().catch((e) => e);
    expect(overloaded).toBeInstanceOf(Anthropic.APIError);
    expect(overloaded.status).toBe(529);
    expect(overloaded.error.error.type).toBe("overloaded_error");
    expect(await call().catch((e) => e)).toBeInstanceOf(Anthropic.InternalServerError);
    expect(await call().catch((e) => e)).toBeInstanceOf(Anthropic.AuthenticationError);
    const bad = await call().catch((e) => e);
    expect(bad).toBeInstanceOf(Anthropic.BadRequestError);
    expect(bad.message).toContain("bad thing");
  });

  it("stamps each request with the wall-clock time, to fractions of a millisecond, however far the process's monotonic clock drifted", async () => {
    // A long-lived process: its monotonic time origin is 250 ms off the wall clock by now.
    const monotonic = performance.now.bind(performance);
    const drifted = vi.spyOn(performance, "now").mockImplementation(() => monotonic() + 250);
    onTestFinished(() => drifted.mockRestore());
    const { client, server } = await start({ script: [reply.text("one"), reply.text("two")] });
    const before = Date.now();
    await client.messages.create({ model: MODEL, max_tokens: 100, messages: [user("hi")] });
    await client.messages.create({ model: MODEL, max_tokens: 100, messages: [user("hi")] });
    const after = Date.now();
    const [first, second] = server.requests.map((request) => request.receivedAt);
    // Date.now() drops the fraction: a stamp may sit up to a millisecond off either bound.
    expect(first!).toBeGreaterThanOrEqual(before - 1);
    expect(second!).toBeLessThanOrEqual(after + 1);
    expect(second!).toBeGreaterThan(first!);
    expect(server.requests.some((request) => !Number.isInteger(request.receivedAt))).toBe(true);
    expect(Math.abs(server.clock() - Date.now())).toBeLessThanOrEqual(1);
  });

  it("cuts a stream mid-way so the SDK sees a dropped connection", async () => {
    const { client } = await start({ script: [reply.cut(4, reply.text("This answer never arrives in full"))] });
    const stream = client.messages.stream({ model: MODEL, max_tokens: 100, messages: [user("x")] });
    await expect(stream.finalMessage()).rejects.toThrow();
  });

  it("refuses a thinking block whose signature was altered, and accepts the original", async () => {
    const { client } = await start({ script: [reply.blocks(reply.thinking("secret reasoning"), reply.toolUseBlock("t", {})), reply.text("ok"), reply.text("ok")] });
    const tools: Anthropic.Tool[] = [{ name: "t", description: "t", input_schema: { type: "object", properties: {} } }];
    const thinking = { type: "enabled" as const, budget_tokens: 1024 };
    const first = await client.messages.create({ model: MODEL, max_tokens: 2000, thinking, tools, messages: [user("x")] });
    const call = first.content[1] as Anthropic.ToolUseBlock;
    const result: Anthropic.MessageParam = { role: "user", content: [{ type: "tool_result", tool_use_id: call.id, content: "done" }] };
    const tampered = first.content.map((b) => (b.type === "thinking" ? { ...b, signature: `${b.signature.slice(0, -4)}AAAA` } : b));
    await expect(
      client.messages.create({ model: MODEL, max_tokens: 2000, thinking, tools, messages: [user("x"), { role: "assistant", content: tampered }, result] }),
    ).rejects.toThrow(/signature/);
    const ok = await client.messages.create({ model: MODEL, max_tokens: 2000, thinking, tools, messages: [user("x"), { role: "assistant", content: first.content }, result] });
    expect(ok.content).toEqual([{ type: "text", text: "ok" }]);
  });

  it("says clearly when the script is exhausted", async () => {
    const { client } = await start({ script: [reply.text("only one")] });
    await client.messages.create({ model: MODEL, max_tokens: 10, messages: [user("x")] });
    await expect(client.messages.create({ model: MODEL, max_tokens: 10, messages: [user("x")] })).rejects.toThrow(/script is exhausted: request 2 has no scripted reply/);
  });

  it("answers from a policy function that sees each request", async () => {
    const { client } = await start({ policy: (request, { index }) => reply.text(`#${index}: ${request.messages.length} message(s)`) });
    const a = await client.messages.create({ model: MODEL, max_tokens: 10, messages: [user("x")] });
    const b = await client.messages.create({ model: MODEL, max_tokens: 10, messages: [user("x"), { role: "assistant", content: "y" }, user("z")] });
    expect(a.content).toEqual([{ type: "text", text: "#0: 1 message(s)" }]);
    expect(b.content).toEqual([{ type: "text", text: "#1: 3 message(s)" }]);
  });

  it("counts tokens", async () => {
    const { client } = await start({ script: [] });
    const count = await client.messages.countTokens({ model: MODEL, messages: [user("a".repeat(400))] });
    expect(count.input_tokens).toBe(100);
  });

  describe("simulated prompt caching", () => {
    const system = (text: string): Anthropic.TextBlockParam[] => [{ type: "text", text, cache_control: { type: "ephemeral" } }];
    const bigSystem = "You are a careful engineer. ".repeat(200);

    it("writes a prefix at its breakpoint, then reads it; a changed prefix misses", async () => {
      const { client } = await start({ policy: () => reply.text("ok") });
      const ask = (sys: string) => client.messages.create({ model: MODEL, max_tokens: 10, system: system(sys), messages: [user("question")] });
      const first = (await ask(bigSystem)).usage;
      expect(first.cache_creation_input_tokens).toBe(Math.ceil(bigSystem.length / 4));
      expect(first.cache_read_input_tokens).toBe(0);
      const second = (await ask(bigSystem)).usage;
      expect(second.cache_read_input_tokens).toBe(first.cache_creation_input_tokens);
      expect(second.cache_creation_input_tokens).toBe(0);
      expect(second.input_tokens).toBe(first.input_tokens);
      const changed = (await ask(`${bigSystem}!`)).usage;
      expect(changed.cache_read_input_tokens).toBe(0);
      expect(changed.cache_creation_input_tokens).toBeGreaterThan(0);
    });

    it("expires entries after five minutes without use", async () => {
      let now = 1_000_000;
      const { client } = await start({ policy: () => reply.text("ok"), now: () => now });
      const ask = () => client.messages.create({ model: MODEL, max_tokens: 10, system: system(bigSystem), messages: [user("q")] });
      await ask();
      now += 4 * 60 * 1000;
      expect((await ask()).usage.cache_read_input_tokens).toBeGreaterThan(0);
      now += 4 * 60 * 1000; // the read refreshed the entry
      expect((await ask()).usage.cache_read_input_tokens).toBeGreaterThan(0);
      now += 5 * 60 * 1000 + 1;
      expect((await ask()).usage.cache_read_input_tokens).toBe(0);
    });

    it("finds an earlier entry only within 20 blocks before a breakpoint", async () => {
      const { client } = await start({ policy: () => reply.text("ok") });
      const block = (label: string, i: number): Anthropic.TextBlockParam => ({ type: "text", text: `${label} ${i} `.repeat(200) });
      const conversation = (label: string, total: number): Anthropic.TextBlockParam[] => {
        const content = Array.from({ length: total }, (_, i) => block(i < 5 ? "shared" : label, i));
        content[total - 1] = { ...content[total - 1]!, cache_control: { type: "ephemeral" } };
        return content;
      };
      const ask = (content: Anthropic.TextBlockParam[]) => client.messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: "user", content }] });
      const shared = (await ask(conversation("unused", 5))).usage; // cached at block 4
      // 24 blocks: the breakpoint (index 23) looks back to index 4, where the entry is.
      expect((await ask(conversation("near", 24))).usage.cache_read_input_tokens).toBe(shared.cache_creation_input_tokens);
      // 25 blocks: index 24 looks back only to index 5; the entry at 4 is out of reach.
      expect((await ask(conversation("far", 25))).usage.cache_read_input_tokens).toBe(0);
    });

    it("caches no prefix shorter than the model's documented minimum", async () => {
      const { client } = await start({ policy: () => reply.text("ok") });
      const ask = (model: string, tokens: number) =>
        client.messages.create({ model, max_tokens: 10, system: system("x".repeat(tokens * 4)), messages: [user("q")] });
      expect(minCacheableTokens(MODEL)).toBe(1024);
      expect((await ask(MODEL, 1000)).usage.cache_creation_input_tokens).toBe(0);
      expect((await ask(MODEL, 1000)).usage.cache_read_input_tokens).toBe(0);
      expect((await ask(MODEL, 1024)).usage.cache_creation_input_tokens).toBe(1024);
      // Haiku 4.5 needs 4096 tokens.
      expect((await ask("claude-haiku-4-5", 3000)).usage.cache_creation_input_tokens).toBe(0);
      expect((await ask("claude-haiku-4-5", 4096)).usage.cache_creation_input_tokens).toBe(4096);
    });

    it("lets a test set its own minimum", async () => {
      const { client } = await start({ policy: () => reply.text("ok"), minCacheableTokens: 0 });
      const tiny = await client.messages.create({ model: MODEL, max_tokens: 10, system: system("short"), messages: [user("q")] });
      expect(tiny.usage.cache_creation_input_tokens).toBe(2);
    });

    it("keeps tools and system cached but not the messages when tool_choice or thinking changes", async () => {
      const { client } = await start({ policy: () => reply.text("ok") });
      const messages: Anthropic.MessageParam[] = [{ role: "user", content: [{ type: "text", text: "Question. ".repeat(500), cache_control: { type: "ephemeral" } }] }];
      const tools: Anthropic.Tool[] = [{ name: "look", description: "Looks", input_schema: { type: "object", properties: {} } }];
      const ask = (extra: Partial<Anthropic.MessageCreateParamsNonStreaming>) =>
        client.messages.create({ model: MODEL, max_tokens: 2048, tools, system: system(bigSystem), messages, ...extra });
      const first = (await ask({})).usage;
      const systemPrefix = first.cache_creation_input_tokens! - Math.ceil("Question. ".repeat(500).length / 4);
      expect((await ask({})).usage.cache_read_input_tokens).toBe(first.cache_creation_input_tokens);
      expect((await ask({ tool_choice: { type: "any" } })).usage.cache_read_input_tokens).toBe(systemPrefix);
      expect((await ask({ thinking: { type: "enabled", budget_tokens: 1024 } })).usage.cache_read_input_tokens).toBe(systemPrefix);
    });

    it("refuses more than four breakpoints", async () => {
      const { client } = await start({ policy: () => reply.text("ok") });
      const content = Array.from({ length: 5 }, (_, i) => ({ type: "text" as const, text: `b${i}`, cache_control: { type: "ephemeral" as const } }));
      await expect(client.messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: "user", content }] })).rejects.toThrow(/maximum of 4 blocks/);
    });
  });
});
