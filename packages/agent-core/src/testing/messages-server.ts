import { createHmac, randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { canonical, estimateTokens, flattenRequest, PromptCache, type CacheUsage } from "./prompt-cache.js";
import { errorTypeFor, type ReplyBlock, type ScriptedReply } from "./replies.js";

/** A request the server received, as parsed, with what it answered. */
export interface RecordedRequest {
  index: number;
  path: string;
  headers: Record<string, string>;
  body: Record<string, any>;
  /**
   * When the request was received, in milliseconds since the epoch with fractions, read from the
   * server's `clock`: the wall clock as the server started, plus the monotonic time since. The
   * time between two requests is measured to the microsecond, and the time itself agrees with
   * `Date.now()` and other wall-clock timestamps (a log's, git's trace) as long as the wall clock
   * is not set while the server runs.
   */
  receivedAt: number;
  status: number;
  /** Usage reported for a successful reply. */
  usage?: CacheUsage & { output_tokens: number };
}

export interface PolicyContext {
  /** 0-based index of this request among all requests to `/v1/messages`. */
  index: number;
  /** Requests received before this one. */
  history: readonly RecordedRequest[];
}

export type ReplyPolicy = (request: Record<string, any>, context: PolicyContext) => ScriptedReply | Promise<ScriptedReply>;

export interface MessagesServerOptions {
  /** Replies used in order, one per request. */
  script?: ScriptedReply[];
  /** Or a function that picks the reply for each request. */
  policy?: ReplyPolicy;
  /** When set, requests must carry this key (as `x-api-key` or a bearer token). */
  apiKey?: string;
  /** Clock for the prompt cache (ms). Default `Date.now`. */
  now?: () => number;
  /** Smallest prefix (tokens) that is cached. Default: the documented minimum of the request's model (`minCacheableTokens`). */
  minCacheableTokens?: number;
  /** Default 0 (a free port). */
  port?: number;
  /**
   * Reject an assistant turn with thinking blocks that comes back different from how it was
   * issued (stricter than the API, which checks only the signatures). Default true.
   */
  checkThinkingTurns?: boolean;
}

export interface MessagesServer {
  /** Base URL for the SDK's `baseURL`, e.g. `http://127.0.0.1:40123`. */
  readonly url: string;
  readonly requests: RecordedRequest[];
  /** Scripted replies not used yet. */
  readonly remaining: number;
  /** The clock `receivedAt` is read from (see there), e.g. to time a request from a moment of the test's. */
  readonly clock: () => number;
  close(): Promise<void>;
}

/**
 * A loopback server that speaks the Anthropic Messages API (JSON and SSE streaming, tool use,
 * thinking with signatures, error bodies, simulated prompt caching), driven by a script or a
 * policy, for testing agents offline through the real `@anthropic-ai/sdk`.
 *
 * @example
 * const server = await startMessagesServer({ script: [reply.toolUse("list_files", {}), reply.text("Done")] });
 * const client = new Anthropic({ apiKey: "test", baseURL: server.url });
 * // … run the agent …
 * expect(server.requests).toHaveLength(2);
 * await server.close();
 */
export async function startMessagesServer(options: MessagesServerOptions = {}): Promise<MessagesServer> {
  if (!options.script && !options.policy) throw new TypeError("startMessagesServer(): pass a `script` or a `policy`");
  const script = [...(options.script ?? [])];
  const checkThinkingTurns = options.checkThinkingTurns ?? true;
  const cache = new PromptCache(options.now ?? Date.now, options.minCacheableTokens);
  const secret = randomBytes(32);
  const issuedRedacted = new Set<string>();
  /** Assistant turns with thinking, as issued, by their first thinking signature or redacted data (equal thinking signs equally). */
  const issuedThinkingTurns = new Map<string, Set<string>>();
  /** tool_use ids issued in a turn that starts with thinking. */
  const thinkingToolUses = new Set<string>();
  const requests: RecordedRequest[] = [];
  const sockets = new Set<Socket>();
  // Read together once: a process's monotonic time origin drifts from the wall clock the longer it lives.
  const wallAtStart = Date.now();
  const monotonicAtStart = performance.now();
  const clock = () => wallAtStart + (performance.now() - monotonicAtStart);
  let messageIndex = 0;

  const sign = (thinking: string) => createHmac("sha256", secret).update(thinking).digest("base64");

  const server = createServer((req, res) => {
    handle(req, res).catch((error) => {
      if (!res.headersSent) sendError(res, 500, "api_error", `Test server failure: ${(error as Error).message}`);
      else res.destroy();
    });
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "/").split("?")[0]!;
    const raw = await readBody(req);
    const headers = Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k, Array.isArray(v) ? v.join(", ") : (v ?? "")]));
    let body: Record<string, any>;
    try {
      body = raw ? (JSON.parse(raw) as Record<string, any>) : {};
    } catch {
      return sendError(res, 400, "invalid_request_error", "Request body is not valid JSON");
    }
    if (req.method !== "POST" || (path !== "/v1/messages" && path !== "/v1/messages/count_tokens")) {
      return sendError(res, 404, "not_found_error", `No route for ${req.method} ${path}`);
    }
    const record: RecordedRequest = { index: requests.length, path, headers, body, receivedAt: clock(), status: 0 };
    requests.push(record);
    const fail = (status: number, type: string, message: string, extra: Record<string, string> = {}) => {
      record.status = status;
      sendError(res, status, type, message, extra);
    };

    // SDKs send the key as `x-api-key` or as a bearer token.
    const key = headers["x-api-key"] || headers.authorization?.replace(/^Bearer\s+/i, "");
    if (!key) return fail(401, "authentication_error", "x-api-key header is required");
    if (options.apiKey && key !== options.apiKey) return fail(401, "authentication_error", "invalid x-api-key");
    const invalid = validate(body, path === "/v1/messages/count_tokens");
    if (invalid) return fail(400, "invalid_request_error", invalid);

    if (path === "/v1/messages/count_tokens") {
      record.status = 200;
      const input_tokens = flattenRequest(body).reduce((sum, block) => sum + block.tokens, 0);
      return sendJson(res, 200, { input_tokens });
    }

    const index = messageIndex++;
    let scripted: ScriptedReply | undefined;
    if (options.policy) scripted = await options.policy(body, { index, history: requests.slice(0, -1) });
    else scripted = script.shift();
    if (!scripted) {
      return fail(500, "api_error", `The test script is exhausted: request ${index + 1} has no scripted reply (${options.script?.length ?? 0} were given)`);
    }
    const fault = scripted.fault ?? {};
    if (fault.delayMs) await sleep(fault.delayMs);
    if (fault.status && fault.status >= 400) {
      return fail(fault.status, fault.errorType ?? errorTypeFor(fault.status), fault.message ?? "Simulated error", fault.retryAfter !== undefined ? { "retry-after": String(fault.retryAfter) } : {});
    }

    const cacheUsage = cache.account(flattenRequest(body), String(body.model ?? ""));
    const content = (scripted.content ?? []).map((block, i) => toApiBlock(block, index, i));
    const thinkingKey = turnKey(content);
    if (thinkingKey) {
      const turns = issuedThinkingTurns.get(thinkingKey) ?? new Set<string>();
      turns.add(canonical(content));
      issuedThinkingTurns.set(thinkingKey, turns);
      if (content[0]?.type === "thinking" || content[0]?.type === "redacted_thinking") {
        for (const block of content) if (block.type === "tool_use") thinkingToolUses.add(block.id);
      }
    }
    const output_tokens = content.reduce((sum, block) => sum + estimateTokens(JSON.stringify(block)), 0);
    const usage = { ...cacheUsage, output_tokens };
    const stopReason = scripted.stopReason ?? (content.some((b) => b.type === "tool_use") ? "tool_use" : "end_turn");
    const message = {
      id: `msg_${String(index).padStart(4, "0")}_${randomBytes(6).toString("hex")}`,
      type: "message",
      role: "assistant",
      model: String(body.model),
      content,
      stop_reason: stopReason,
      stop_sequence: null,
      usage,
    };
    record.status = 200;
    record.usage = usage;
    const requestId = `req_${randomBytes(8).toString("hex")}`;
    if (!body.stream) {
      res.writeHead(200, { "content-type": "application/json", "request-id": requestId });
      res.end(JSON.stringify(message));
      return;
    }
    await streamMessage(res, message, requestId, fault.eventDelayMs ?? 0, fault.cutAfterEvents);
  }

  function toApiBlock(block: ReplyBlock, messageIndex: number, blockIndex: number): Record<string, any> {
    switch (block.type) {
      case "text":
        return { type: "text", text: block.text };
      case "tool_use":
        return { type: "tool_use", id: block.id ?? `toolu_${String(messageIndex).padStart(4, "0")}_${blockIndex}_${randomBytes(4).toString("hex")}`, name: block.name, input: block.input ?? {} };
      case "thinking":
        return { type: "thinking", thinking: block.thinking, signature: sign(block.thinking) };
      case "redacted_thinking": {
        const data = randomBytes(24).toString("base64");
        issuedRedacted.add(data);
        return { type: "redacted_thinking", data };
      }
    }
  }

  /** Mirrors the API's checks that matter to a client; returns the error message or null. */
  function validate(body: Record<string, any>, countOnly: boolean): string | null {
    if (typeof body.model !== "string" || !body.model) return "model: Field required";
    if (!countOnly && (!Number.isInteger(body.max_tokens) || body.max_tokens < 1)) return "max_tokens: Field required (a positive integer)";
    if (!Array.isArray(body.messages) || body.messages.length === 0) return "messages: at least one message is required";
    if (body.thinking?.type === "enabled") {
      const budget = body.thinking.budget_tokens;
      if (!Number.isInteger(budget) || budget < 1024) return "thinking.budget_tokens: must be at least 1024";
      if (!countOnly && budget >= body.max_tokens) return "max_tokens must be greater than thinking.budget_tokens";
    }
    let breakpoints = 0;
    const countBreakpoint = (value: any) => {
      if (value && typeof value === "object" && value.cache_control) breakpoints++;
    };
    (body.tools ?? []).forEach(countBreakpoint);
    if (Array.isArray(body.system)) body.system.forEach(countBreakpoint);
    let previousToolUses: string[] = [];
    const messages = body.messages as any[];
    for (const [i, message] of messages.entries()) {
      const expectedRole = i % 2 === 0 ? "user" : "assistant";
      if (message?.role !== expectedRole) return `messages.${i}.role: roles must alternate starting with "user" (got "${message?.role}")`;
      const content = typeof message.content === "string" ? [] : message.content;
      if (!Array.isArray(content)) return `messages.${i}.content: must be a string or an array of blocks`;
      content.forEach(countBreakpoint);
      for (const [j, block] of content.entries()) {
        if (block?.type === "text" && (typeof block.text !== "string" || block.text.length === 0)) return `messages.${i}.content.${j}: text content blocks must be non-empty`;
      }
      if (message.role === "user") {
        const answered = content.filter((b: any) => b?.type === "tool_result").map((b: any) => b.tool_use_id);
        for (const id of answered) {
          if (!previousToolUses.includes(id)) return `messages.${i}.content: unexpected tool_use_id "${id}" in tool_result blocks: each tool_result must answer a tool_use in the previous message`;
        }
        const missing = previousToolUses.filter((id) => !answered.includes(id));
        if (missing.length) return `messages.${i}: tool_use ids were found without tool_result blocks immediately after: ${missing.join(", ")}`;
        previousToolUses = [];
      } else {
        previousToolUses = content.filter((b: any) => b?.type === "tool_use").map((b: any) => b.id);
        for (const [j, block] of content.entries()) {
          if (block?.type === "thinking" && (typeof block.signature !== "string" || block.signature !== sign(String(block.thinking)))) {
            return `messages.${i}.content.${j}: Invalid \`signature\` in \`thinking\` block`;
          }
          if (block?.type === "redacted_thinking" && !issuedRedacted.has(block.data)) {
            return `messages.${i}.content.${j}: Invalid \`data\` in \`redacted_thinking\` block`;
          }
          if ((block?.type === "thinking" || block?.type === "redacted_thinking") && block.cache_control) {
            return `messages.${i}.content.${j}: cache_control cannot be set on thinking blocks`;
          }
        }
        // A turn with thinking goes back exactly as it was issued, or not at all.
        const key = turnKey(content);
        const issued = key ? issuedThinkingTurns.get(key) : undefined;
        if (issued !== undefined && checkThinkingTurns && !issued.has(canonical(content))) {
          return `messages.${i}.content: an assistant turn with thinking blocks was changed; pass it back exactly as received or drop the whole turn`;
        }
      }
    }
    // In a tool-use loop the latest assistant turn must keep its thinking.
    const last = messages.at(-1);
    const lastAssistant = messages.at(-2);
    if (
      body.thinking?.type === "enabled" &&
      last?.role === "user" &&
      Array.isArray(last.content) &&
      last.content.some((b: any) => b?.type === "tool_result") &&
      Array.isArray(lastAssistant?.content) &&
      lastAssistant.content.some((b: any) => b?.type === "tool_use" && thinkingToolUses.has(b.id))
    ) {
      const first = lastAssistant.content[0];
      if (first?.type !== "thinking" && first?.type !== "redacted_thinking") {
        return `messages.${messages.length - 2}.content.0.type: Expected \`thinking\` or \`redacted_thinking\`, but found \`${first?.type}\`. When \`thinking\` is enabled, a final \`assistant\` message must start with a thinking block.`;
      }
    }
    if (breakpoints > 4) return `A maximum of 4 blocks with cache_control may be provided. Found ${breakpoints}.`;
    return null;
  }

  await new Promise<void>((resolve) => server.listen(options.port ?? 0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    get remaining() {
      return script.length;
    },
    clock,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Identifies an assistant turn with thinking: its first signature or redacted data. */
function turnKey(content: any[]): string | undefined {
  for (const block of content) {
    if (block?.type === "thinking" && typeof block.signature === "string") return `s:${block.signature}`;
    if (block?.type === "redacted_thinking" && typeof block.data === "string") return `r:${block.data}`;
  }
  return undefined;
}

async function streamMessage(res: ServerResponse, message: Record<string, any>, requestId: string, eventDelayMs: number, cutAfter?: number): Promise<void> {
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", "request-id": requestId });
  const events: Array<[string, unknown]> = [];
  const { content, usage, stop_reason } = message as { content: any[]; usage: any; stop_reason: string };
  events.push(["message_start", { type: "message_start", message: { ...message, content: [], stop_reason: null, usage: { ...usage, output_tokens: 1 } } }]);
  content.forEach((block, index) => {
    switch (block.type) {
      case "text":
        events.push(["content_block_start", { type: "content_block_start", index, content_block: { type: "text", text: "" } }]);
        for (const piece of chunks(block.text, 12)) events.push(["content_block_delta", { type: "content_block_delta", index, delta: { type: "text_delta", text: piece } }]);
        break;
      case "thinking":
        events.push(["content_block_start", { type: "content_block_start", index, content_block: { type: "thinking", thinking: "", signature: "" } }]);
        for (const piece of chunks(block.thinking, 16)) events.push(["content_block_delta", { type: "content_block_delta", index, delta: { type: "thinking_delta", thinking: piece } }]);
        events.push(["content_block_delta", { type: "content_block_delta", index, delta: { type: "signature_delta", signature: block.signature } }]);
        break;
      case "redacted_thinking":
        events.push(["content_block_start", { type: "content_block_start", index, content_block: block }]);
        break;
      case "tool_use":
        events.push(["content_block_start", { type: "content_block_start", index, content_block: { ...block, input: {} } }]);
        for (const piece of chunks(JSON.stringify(block.input), 7)) {
          events.push(["content_block_delta", { type: "content_block_delta", index, delta: { type: "input_json_delta", partial_json: piece } }]);
        }
        break;
    }
    events.push(["content_block_stop", { type: "content_block_stop", index }]);
    if (index === 0) events.push(["ping", { type: "ping" }]);
  });
  events.push(["message_delta", { type: "message_delta", delta: { stop_reason, stop_sequence: null }, usage }]);
  events.push(["message_stop", { type: "message_stop" }]);

  for (const [i, [name, data]] of events.entries()) {
    if (cutAfter !== undefined && i >= cutAfter) {
      // Simulate a dropped connection: no message_stop, the socket just goes away.
      res.socket?.destroy();
      return;
    }
    if (eventDelayMs) await sleep(eventDelayMs);
    if (res.destroyed) return;
    res.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
  }
  res.end();
}

function chunks(text: string, size: number): string[] {
  if (text.length === 0) return [""];
  const out: string[] = [];
  for (let i = 0; i < text.length; i += size) out.push(text.slice(i, i + size));
  return out;
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { "content-type": "application/json", "request-id": `req_${randomBytes(8).toString("hex")}`, ...headers });
  res.end(JSON.stringify(body));
}

function sendError(res: ServerResponse, status: number, type: string, message: string, headers: Record<string, string> = {}): void {
  const requestId = `req_${randomBytes(8).toString("hex")}`;
  res.writeHead(status, { "content-type": "application/json", "request-id": requestId, ...headers });
  res.end(JSON.stringify({ type: "error", error: { type, message }, request_id: requestId }));
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    req.on("data", (chunk: Buffer) => parts.push(chunk));
    req.on("end", () => resolve(Buffer.concat(parts).toString("utf8")));
    req.on("error", reject);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
