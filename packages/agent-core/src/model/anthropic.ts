import type Anthropic from "@anthropic-ai/sdk";
import { AbortedError, ConfigError, ModelError, ModelUnavailableError } from "../errors.js";
import { estimateRequestTokens } from "./estimate.js";
import {
  emptyUsage,
  type AttemptUsagePart,
  type CacheBreakpoint,
  type ContentBlock,
  type Message,
  type Model,
  type ModelCallOptions,
  type ModelRequest,
  type ModelResponse,
  type ModelStreamEvent,
  type ToolSpec,
  type Usage,
} from "./model.js";
import { isSealed, perSealedEntry } from "./sealed.js";
import { mayRetry, parseRetryAfter, resolveRetryPolicy, retryDelay, type RetryPolicy } from "./retry.js";

type AnthropicModule = typeof import("@anthropic-ai/sdk");
let sdkModule: Promise<AnthropicModule> | undefined;
/** The SDK is loaded on the first request, so that importing keen does not pay for it. */
function loadSdk(): Promise<AnthropicModule> {
  return (sdkModule ??= import("@anthropic-ai/sdk"));
}

export interface AnthropicModelOptions {
  /** Model id, e.g. `claude-sonnet-5-5`. */
  model: string;
  /** Defaults to `ANTHROPIC_API_KEY`. */
  apiKey?: string;
  /** Defaults to `ANTHROPIC_BASE_URL`, then the public API. */
  baseURL?: string;
  /**
   * Context window in tokens. Default 200 000, or 1 000 000 when `headers` turn on the 1M
   * context beta (an `anthropic-beta` value starting with `context-1m`).
   */
  contextWindow?: number;
  /**
   * Retry behaviour for 429, 529, 5xx and dropped connections or streams. The default rides out
   * about a minute of overload; when retries are spent a `ModelUnavailableError` is thrown.
   */
  retry?: Partial<RetryPolicy>;
  /** Per-request timeout in ms. Default 10 minutes. */
  timeoutMs?: number;
  /** Extra headers on every request (e.g. `anthropic-beta`). */
  headers?: Record<string, string>;
  /** Custom fetch, e.g. for proxies or tests. */
  fetch?: typeof fetch;
  /** Place prompt-cache breakpoints. Default true. */
  promptCaching?: boolean;
}

/** HTTP statuses worth retrying: timeouts, conflicts, rate limits, server errors and overload (529). */
const RETRYABLE_STATUS = new Set([408, 409, 429, 500, 502, 503, 504, 529]);

/**
 * A `Model` backed by Claude through `@anthropic-ai/sdk`: streams, keeps thinking blocks
 * intact, places prompt-cache breakpoints, and retries transient failures itself so that every
 * retry is visible as a `retry` stream part.
 *
 * @example
 * const model = anthropic({ model: "claude-sonnet-5-5" });
 * const run = startRun({ vision: "Add a README", repo: ".", model });
 */
export function anthropic(options: AnthropicModelOptions): Model {
  return new AnthropicModel(options);
}

export class AnthropicModel implements Model {
  readonly id: string;
  readonly contextWindow: number;
  private client: Promise<Anthropic> | undefined;
  private readonly clientOptions: ConstructorParameters<typeof Anthropic>[0];
  private readonly retry: RetryPolicy;
  private readonly caching: boolean;
  private readonly modelName: string;

  constructor(options: AnthropicModelOptions) {
    if (!options.model?.trim()) throw new ConfigError("anthropic(): `model` is required");
    const apiKey = options.apiKey ?? process.env.ANTHROPIC_API_KEY;
    if (!apiKey) throw new ConfigError("anthropic(): no API key (pass `apiKey` or set ANTHROPIC_API_KEY)");
    this.modelName = options.model;
    this.id = `anthropic:${options.model}`;
    if (options.contextWindow !== undefined && (!Number.isInteger(options.contextWindow) || options.contextWindow <= 0)) {
      throw new ConfigError("anthropic(): `contextWindow` must be a positive integer");
    }
    this.contextWindow = options.contextWindow ?? defaultContextWindow(options.headers);
    const retry = resolveRetryPolicy(options.retry);
    if (typeof retry === "string") throw new ConfigError(`anthropic(): ${retry}`);
    this.retry = retry;
    this.caching = options.promptCaching ?? true;
    this.clientOptions = {
      apiKey,
      baseURL: options.baseURL ?? process.env.ANTHROPIC_BASE_URL ?? null,
      // Retries happen here, not in the SDK, so each one is reported and usage is counted once.
      maxRetries: 0,
      timeout: options.timeoutMs ?? 600_000,
      ...(options.headers ? { defaultHeaders: options.headers } : {}),
      ...(options.fetch ? { fetch: options.fetch } : {}),
    };
    // Start loading the SDK and making the client now, so both overlap the run's set-up (git,
    // repository analysis) instead of delaying the first request. A failure surfaces on that request.
    this.sdk().catch(() => {});
  }

  private sdk(): Promise<Anthropic> {
    return (this.client ??= loadSdk().then(({ default: Sdk }) => new Sdk(this.clientOptions)));
  }

  async *stream(request: ModelRequest, options: ModelCallOptions = {}): AsyncGenerator<ModelStreamEvent> {
    const params = this.params(request);
    const signal = options.signal;
    const { APIError, APIUserAbortError } = await loadSdk();
    const client = await this.sdk();
    const startedAt = this.retry.now();
    for (let attempt = 0; ; attempt++) {
      if (signal?.aborted) throw new AbortedError();
      const progress: AttemptProgress = { streamedChars: 0 };
      try {
        yield* this.attempt(client, params, progress, signal);
        return;
      } catch (error) {
        if (signal?.aborted || error instanceof APIUserAbortError) {
          // The server may have started on the request: count what it reported, or what was sent.
          yield attemptUsage(progress, params.model, "aborted", () => estimateRequestTokens(request));
          throw new AbortedError();
        }
        const failure = classify(error, APIError);
        const delayMs = retryDelay(this.retry, attempt + 1, failure.retryAfterMs);
        const retrying = failure.retryable && mayRetry(this.retry, attempt + 1, delayMs, startedAt);
        // A stream that broke after the server started answering still cost tokens.
        if (progress.usage) yield attemptUsage(progress, params.model, retrying ? "retried" : "failed");
        if (!retrying) throw giveUp(failure, attempt + 1, error);
        yield {
          type: "retry",
          attempt: attempt + 1,
          delayMs,
          reason: failure.reason,
          ...(failure.status !== undefined ? { status: failure.status } : {}),
        };
        await this.retry.sleep(delayMs, signal);
      }
    }
  }

  /**
   * Counts the input tokens of a request with the API's `count_tokens` endpoint (free of charge,
   * no model run). Failures are retried like `stream`.
   */
  async countTokens(request: ModelRequest, options: ModelCallOptions = {}): Promise<number> {
    // The request as `stream` sends it, less the output limit, which counting does not take.
    const { max_tokens: _, ...params } = this.params(request);
    const { APIError, APIUserAbortError } = await loadSdk();
    const client = await this.sdk();
    const startedAt = this.retry.now();
    for (let attempt = 0; ; attempt++) {
      if (options.signal?.aborted) throw new AbortedError();
      try {
        const counted = await client.messages.countTokens(params, options.signal ? { signal: options.signal } : {});
        return counted.input_tokens;
      } catch (error) {
        if (options.signal?.aborted || error instanceof APIUserAbortError) throw new AbortedError();
        const failure = classify(error, APIError);
        const delayMs = retryDelay(this.retry, attempt + 1, failure.retryAfterMs);
        if (!failure.retryable || !mayRetry(this.retry, attempt + 1, delayMs, startedAt)) {
          throw giveUp({ ...failure, reason: `count_tokens: ${failure.reason}` }, attempt + 1, error);
        }
        await this.retry.sleep(delayMs, options.signal);
      }
    }
  }

  private async *attempt(client: Anthropic, params: Anthropic.MessageCreateParamsNonStreaming, progress: AttemptProgress, signal?: AbortSignal): AsyncGenerator<ModelStreamEvent> {
    const stream = client.messages.stream(params, signal ? { signal } : {});
    for await (const event of stream) {
      progress.requestId ??= stream.request_id ?? undefined;
      switch (event.type) {
        case "message_start":
          progress.usage = usageOf(event.message.usage);
          break;
        case "message_delta":
          // Delta usage is cumulative; input fields appear when the server revises them.
          if (progress.usage) {
            const delta = event.usage;
            progress.usage = {
              inputTokens: delta.input_tokens ?? progress.usage.inputTokens,
              outputTokens: delta.output_tokens ?? progress.usage.outputTokens,
              cacheCreationInputTokens: delta.cache_creation_input_tokens ?? progress.usage.cacheCreationInputTokens,
              cacheReadInputTokens: delta.cache_read_input_tokens ?? progress.usage.cacheReadInputTokens,
            };
          }
          break;
        case "content_block_start":
          yield { type: "block_start", index: event.index, block: fromApiBlock(event.content_block) ?? { type: "text", text: "" } };
          break;
        case "content_block_delta":
          if (event.delta.type === "text_delta") {
            progress.streamedChars += event.delta.text.length;
            yield { type: "text_delta", index: event.index, text: event.delta.text };
          } else if (event.delta.type === "thinking_delta") {
            progress.streamedChars += event.delta.thinking.length;
            yield { type: "thinking_delta", index: event.index, thinking: event.delta.thinking };
          } else if (event.delta.type === "input_json_delta") {
            progress.streamedChars += event.delta.partial_json.length;
            yield { type: "tool_input_delta", index: event.index, partialJson: event.delta.partial_json };
          }
          break;
        case "content_block_stop":
          yield { type: "block_stop", index: event.index };
          break;
      }
    }
    const message = await stream.finalMessage();
    const content: ContentBlock[] = [];
    for (const block of message.content) {
      const converted = fromApiBlock(block);
      if (converted) content.push(converted);
    }
    const response: ModelResponse = {
      id: stream.request_id ?? message.id,
      model: message.model,
      content,
      stopReason: message.stop_reason ?? "end_turn",
      usage: usageOf(message.usage),
    };
    yield { type: "response", response };
  }

  /**
   * Builds API parameters, with at most four cache breakpoints: the system prompt (which caches
   * the tools before it too) and the last block of the newest user turn always; then the blocks
   * the request names in `cacheBreakpoints`; then, while slots are left, the first block of the
   * first message (the task, which survives when later turns are pruned) and the last block of
   * the second-newest user turn (a cache hit within the API's 20-block lookback when a turn adds
   * many blocks). The result is the caller's own copy of the parameters as they are sent (their
   * JSON form: a Date in a tool input is its text, a function is left out), so nothing in it is
   * shared with later requests.
   */
  toParams(request: ModelRequest): Anthropic.MessageCreateParamsNonStreaming {
    return JSON.parse(JSON.stringify(this.params(request))) as Anthropic.MessageCreateParamsNonStreaming;
  }

  /** {@link toParams} for this adapter's own requests: the messages' API forms in it are shared (see `apiMessage`) and never changed. */
  private params(request: ModelRequest): Anthropic.MessageCreateParamsNonStreaming {
    const cache = this.caching ? { cache_control: { type: "ephemeral" as const } } : {};
    const tools = request.tools.map(apiTool);
    const messages = request.messages.map(apiMessage);
    if (this.caching) placeBreakpoints(messages, request.cacheBreakpoints ?? []);
    return {
      model: this.modelName,
      max_tokens: request.maxTokens,
      system: [{ type: "text", text: request.system, ...cache }],
      messages,
      ...(tools.length ? { tools } : {}),
      ...(tools.length && request.toolChoice && request.toolChoice !== "auto" ? { tool_choice: { type: request.toolChoice } } : {}),
      ...(request.thinking ? { thinking: { type: "enabled", budget_tokens: request.thinking.budgetTokens } } : {}),
    };
  }
}

/** Breakpoints in messages: the system prompt holds one of the API's four. */
const MESSAGE_BREAKPOINTS = 3;

/**
 * Marks up to three blocks of `messages` with `cache_control`. A marked block is a copy in a copy
 * of its message: the messages themselves may be a conversation's recorded ones, shared by every
 * request of the run, and a mark belongs to this request alone.
 */
function placeBreakpoints(messages: ApiMessage[], hints: readonly CacheBreakpoint[]): void {
  const marked = new Set<string>();
  const mark = (at: BlockPosition | undefined) => {
    if (!at || marked.size >= MESSAGE_BREAKPOINTS || marked.has(`${at.message}.${at.block}`)) return;
    marked.add(`${at.message}.${at.block}`);
    const message = messages[at.message]!;
    const content = [...message.content];
    content[at.block] = { ...(content[at.block] as object), cache_control: { type: "ephemeral" } } as Anthropic.ContentBlockParam;
    messages[at.message] = { role: message.role, content };
  };
  const userTurns = messages.flatMap((m, i) => (m.role === "user" ? [i] : [])).slice(-2);
  const newest = userTurns.at(-1);
  if (newest !== undefined) mark(lastCacheable(messages, newest, Number.POSITIVE_INFINITY));
  for (const hint of hints) {
    if (Number.isInteger(hint.message) && Number.isInteger(hint.block) && hint.message >= 0 && hint.message < messages.length && hint.block >= 0) {
      mark(lastCacheable(messages, hint.message, hint.block));
    }
  }
  const taskBlock = messages[0] ? messages[0].content.findIndex(cacheable) : -1;
  const task = taskBlock >= 0 ? { message: 0, block: taskBlock } : undefined;
  const previous = userTurns.length > 1 ? lastCacheable(messages, userTurns[0]!, Number.POSITIVE_INFINITY) : undefined;
  // Named breakpoints already cover the task's prefix; the lookback helper matters more then.
  for (const at of hints.length ? [previous, task] : [task, previous]) mark(at);
}

interface BlockPosition {
  message: number;
  block: number;
}

/** The last block that can carry cache_control at or before `messages[message].content[block]`. */
function lastCacheable(messages: readonly ApiMessage[], message: number, block: number): BlockPosition | undefined {
  for (let m = message; m >= 0; m--) {
    const content = messages[m]!.content;
    for (let b = Math.min(block, content.length - 1); b >= 0; b--) if (cacheable(content[b]!)) return { message: m, block: b };
    block = Number.POSITIVE_INFINITY;
  }
  return undefined;
}

function defaultContextWindow(headers: Record<string, string> | undefined): number {
  const beta = Object.entries(headers ?? {}).find(([name]) => name.toLowerCase() === "anthropic-beta")?.[1] ?? "";
  return beta.split(",").some((value) => value.trim().startsWith("context-1m")) ? 1_000_000 : 200_000;
}

/** A message as the API takes it: always a list of blocks. */
type ApiMessage = { role: "user" | "assistant"; content: Anthropic.ContentBlockParam[] };

/**
 * A message's API form. Its blocks hold what the message's blocks hold, passed on as they are
 * (thinking signatures must reach the API byte for byte) and never changed here. Worked out once
 * for a recorded (sealed) message, so a request costs per message, not per block, however long
 * the conversation grows. That form is a plain copy of the sealed message, made once: the SDK
 * serializes the whole conversation on every request, and V8 serializes frozen objects markedly
 * slower than plain ones.
 */
const apiMessage: (message: Message) => ApiMessage = perSealedEntry((message: Message): ApiMessage => {
  const content = typeof message.content === "string" ? [{ type: "text" as const, text: message.content }] : message.content;
  const form: ApiMessage = { role: message.role, content: content as Anthropic.ContentBlockParam[] };
  // A sealed message is JSON data only (see sealed.ts): its JSON copy sends the same bytes.
  return isSealed(message) ? (JSON.parse(JSON.stringify(form)) as ApiMessage) : form;
});

/** A tool as the API takes it; worked out once, as a plain copy, for a sealed spec (a run seals the specs it offers). */
const apiTool: (tool: ToolSpec) => Anthropic.Tool = perSealedEntry((tool: ToolSpec) => {
  const form: Anthropic.Tool = { name: tool.name, description: tool.description, input_schema: tool.inputSchema as Anthropic.Tool.InputSchema };
  return isSealed(tool) ? (JSON.parse(JSON.stringify(form)) as Anthropic.Tool) : form;
});

/** Thinking blocks cannot carry cache_control, and empty text blocks are rejected. */
function cacheable(block: Anthropic.ContentBlockParam): boolean {
  return block.type !== "thinking" && block.type !== "redacted_thinking" && !(block.type === "text" && !block.text);
}

function fromApiBlock(block: Anthropic.ContentBlock): ContentBlock | undefined {
  switch (block.type) {
    case "text":
      return { type: "text", text: block.text };
    case "thinking":
      return { type: "thinking", thinking: block.thinking, signature: block.signature };
    case "redacted_thinking":
      return { type: "redacted_thinking", data: block.data };
    case "tool_use":
      return { type: "tool_use", id: block.id, name: block.name, input: block.input };
    default:
      return undefined;
  }
}

function usageOf(usage: Anthropic.Usage): Usage {
  return {
    inputTokens: usage.input_tokens ?? 0,
    outputTokens: usage.output_tokens ?? 0,
    cacheCreationInputTokens: usage.cache_creation_input_tokens ?? 0,
    cacheReadInputTokens: usage.cache_read_input_tokens ?? 0,
  };
}

interface Failure {
  retryable: boolean;
  reason: string;
  status?: number;
  retryAfterMs?: number;
}

function classify(error: unknown, APIError: AnthropicModule["APIError"]): Failure {
  if (error instanceof APIError && error.status !== undefined) {
    const type = error.type ?? "api_error";
    const retryAfterMs = parseRetryAfter(error.headers);
    return {
      retryable: RETRYABLE_STATUS.has(error.status) || error.status >= 500,
      reason: `${error.status} ${type}: ${error.apiMessage ?? error.message}`,
      status: error.status,
      ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
    };
  }
  // Connection failures, timeouts and streams cut before message_stop carry no status.
  const message = error instanceof Error ? error.message : String(error);
  return { retryable: true, reason: `connection error: ${message}` };
}

/** What one attempt got before it ended: the server's usage once the stream started, and how much streamed. */
interface AttemptProgress {
  usage?: Usage;
  streamedChars: number;
  requestId?: string;
}

/**
 * The usage of an attempt that did not produce the response: the server's numbers (output at
 * least what streamed), or, before the server said anything, the estimated input that was sent.
 */
function attemptUsage(progress: AttemptProgress, model: string, outcome: AttemptUsagePart["outcome"], estimateInput?: () => number): AttemptUsagePart {
  const streamed = Math.ceil(progress.streamedChars / 4);
  const usage: Usage = progress.usage
    ? { ...progress.usage, outputTokens: Math.max(progress.usage.outputTokens, streamed) }
    : { ...emptyUsage(), inputTokens: estimateInput?.() ?? 0 };
  return { type: "attempt_usage", usage, outcome, estimated: !progress.usage, model, ...(progress.requestId ? { requestId: progress.requestId } : {}) };
}

/** The error for a request that will not be retried (any more). */
function giveUp(failure: Failure, attempts: number, cause: unknown): ModelError {
  if (!failure.retryable) return new ModelError(failure.reason, { ...(failure.status !== undefined ? { status: failure.status } : {}), retryable: false, cause });
  const message = `${failure.reason} (gave up after ${attempts} attempt${attempts === 1 ? "" : "s"}; the model is unavailable for now and the work can be resumed)`;
  return new ModelUnavailableError(message, { ...(failure.status !== undefined ? { status: failure.status } : {}), cause });
}
