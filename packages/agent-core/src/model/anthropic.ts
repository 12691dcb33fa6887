import Anthropic from "@anthropic-ai/sdk";
import { AbortedError, ConfigError, ModelError } from "../errors.js";
import {
  type ContentBlock,
  type Message,
  type Model,
  type ModelCallOptions,
  type ModelRequest,
  type ModelResponse,
  type ModelStreamEvent,
  type Usage,
} from "./model.js";
import { defaultRetryPolicy, parseRetryAfter, retryDelay, sleep, type RetryPolicy } from "./retry.js";

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
  /** Retry behaviour for 429, 529, 5xx and dropped connections or streams. */
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
  private readonly client: Anthropic;
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
    this.retry = { ...defaultRetryPolicy, ...options.retry };
    this.caching = options.promptCaching ?? true;
    this.client = new Anthropic({
      apiKey,
      baseURL: options.baseURL ?? process.env.ANTHROPIC_BASE_URL ?? null,
      // Retries happen here, not in the SDK, so each one is reported and usage is counted once.
      maxRetries: 0,
      timeout: options.timeoutMs ?? 600_000,
      ...(options.headers ? { defaultHeaders: options.headers } : {}),
      ...(options.fetch ? { fetch: options.fetch } : {}),
    });
  }

  async *stream(request: ModelRequest, options: ModelCallOptions = {}): AsyncGenerator<ModelStreamEvent> {
    const params = this.toParams(request);
    const signal = options.signal;
    for (let attempt = 0; ; attempt++) {
      if (signal?.aborted) throw new AbortedError();
      try {
        yield* this.attempt(params, signal);
        return;
      } catch (error) {
        if (signal?.aborted || error instanceof Anthropic.APIUserAbortError) throw new AbortedError();
        const failure = classify(error);
        if (!failure.retryable || attempt >= this.retry.maxRetries) {
          const tries = attempt + 1;
          throw new ModelError(`${failure.reason}${failure.retryable ? ` (gave up after ${tries} attempts)` : ""}`, {
            status: failure.status,
            retryable: failure.retryable,
            cause: error,
          });
        }
        const delayMs = retryDelay(this.retry, attempt + 1, failure.retryAfterMs);
        yield {
          type: "retry",
          attempt: attempt + 1,
          delayMs,
          reason: failure.reason,
          ...(failure.status !== undefined ? { status: failure.status } : {}),
        };
        await sleep(delayMs, signal);
      }
    }
  }

  /**
   * Counts the input tokens of a request with the API's `count_tokens` endpoint (free of charge,
   * no model run). Failures are retried like `stream`.
   */
  async countTokens(request: ModelRequest, options: ModelCallOptions = {}): Promise<number> {
    // The request as `stream` sends it, less the output limit, which counting does not take.
    const { max_tokens: _, ...params } = this.toParams(request);
    for (let attempt = 0; ; attempt++) {
      if (options.signal?.aborted) throw new AbortedError();
      try {
        const counted = await this.client.messages.countTokens(params, options.signal ? { signal: options.signal } : {});
        return counted.input_tokens;
      } catch (error) {
        if (options.signal?.aborted || error instanceof Anthropic.APIUserAbortError) throw new AbortedError();
        const failure = classify(error);
        if (!failure.retryable || attempt >= this.retry.maxRetries) {
          throw new ModelError(`count_tokens: ${failure.reason}`, { status: failure.status, retryable: failure.retryable, cause: error });
        }
        await sleep(retryDelay(this.retry, attempt + 1, failure.retryAfterMs), options.signal);
      }
    }
  }

  private async *attempt(params: Anthropic.MessageCreateParamsNonStreaming, signal?: AbortSignal): AsyncGenerator<ModelStreamEvent> {
    const stream = this.client.messages.stream(params, signal ? { signal } : {});
    for await (const event of stream) {
      switch (event.type) {
        case "content_block_start":
          yield { type: "block_start", index: event.index, block: fromApiBlock(event.content_block) ?? { type: "text", text: "" } };
          break;
        case "content_block_delta":
          if (event.delta.type === "text_delta") yield { type: "text_delta", index: event.index, text: event.delta.text };
          else if (event.delta.type === "thinking_delta") yield { type: "thinking_delta", index: event.index, thinking: event.delta.thinking };
          else if (event.delta.type === "input_json_delta") yield { type: "tool_input_delta", index: event.index, partialJson: event.delta.partial_json };
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
   * the tools before it too), the first block of the first message (the task, which survives
   * when later turns are pruned), and the last block of the two newest user turns.
   */
  toParams(request: ModelRequest): Anthropic.MessageCreateParamsNonStreaming {
    const cache = this.caching ? { cache_control: { type: "ephemeral" as const } } : {};
    const tools: Anthropic.Tool[] = request.tools.map((tool) => ({
      name: tool.name,
      description: tool.description,
      input_schema: tool.inputSchema as Anthropic.Tool.InputSchema,
    }));
    const messages = request.messages.map(toApiMessage);
    if (this.caching) {
      if (messages[0]) markFirstBlock(messages[0]);
      // The newest breakpoint caches the whole conversation; the one before it keeps a
      // cache hit within the API's 20-block lookback when a turn adds many blocks.
      const userTurns = messages.flatMap((m, i) => (m.role === "user" ? [i] : [])).slice(-2);
      for (const index of userTurns) markLastBlock(messages[index]!);
    }
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

function defaultContextWindow(headers: Record<string, string> | undefined): number {
  const beta = Object.entries(headers ?? {}).find(([name]) => name.toLowerCase() === "anthropic-beta")?.[1] ?? "";
  return beta.split(",").some((value) => value.trim().startsWith("context-1m")) ? 1_000_000 : 200_000;
}

function toApiMessage(message: Message): Anthropic.MessageParam {
  if (typeof message.content === "string") {
    return { role: message.role, content: [{ type: "text", text: message.content }] };
  }
  // Blocks are copied as they are: thinking signatures must reach the API byte for byte.
  return { role: message.role, content: message.content.map((block) => ({ ...block })) as Anthropic.ContentBlockParam[] };
}

/** Thinking blocks cannot carry cache_control, and empty text blocks are rejected. */
function cacheable(block: Anthropic.ContentBlockParam): boolean {
  return block.type !== "thinking" && block.type !== "redacted_thinking" && !(block.type === "text" && !block.text);
}

function markFirstBlock(message: Anthropic.MessageParam): void {
  if (typeof message.content === "string") return;
  const block = message.content.find(cacheable);
  if (block) (block as { cache_control?: unknown }).cache_control = { type: "ephemeral" };
}

function markLastBlock(message: Anthropic.MessageParam): void {
  if (typeof message.content === "string") return;
  const block = message.content.findLast(cacheable);
  if (block) (block as { cache_control?: unknown }).cache_control = { type: "ephemeral" };
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

function classify(error: unknown): Failure {
  if (error instanceof Anthropic.APIError && error.status !== undefined) {
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
