import * as z from "zod";

/**
 * Provider-neutral conversation types. They mirror the Messages API shapes so that
 * provider-specific blocks (thinking signatures, redacted thinking) survive a round trip unchanged.
 */
export const TextBlock = z.object({ type: z.literal("text"), text: z.string() });
export type TextBlock = z.infer<typeof TextBlock>;

export const ThinkingBlock = z.object({ type: z.literal("thinking"), thinking: z.string(), signature: z.string() });
export type ThinkingBlock = z.infer<typeof ThinkingBlock>;

export const RedactedThinkingBlock = z.object({ type: z.literal("redacted_thinking"), data: z.string() });
export type RedactedThinkingBlock = z.infer<typeof RedactedThinkingBlock>;

export const ToolUseBlock = z.object({
  type: z.literal("tool_use"),
  id: z.string(),
  name: z.string(),
  input: z.unknown(),
});
export type ToolUseBlock = z.infer<typeof ToolUseBlock>;

export const ToolResultBlock = z.object({
  type: z.literal("tool_result"),
  tool_use_id: z.string(),
  content: z.union([z.string(), z.array(TextBlock)]),
  is_error: z.boolean().optional(),
});
export type ToolResultBlock = z.infer<typeof ToolResultBlock>;

export const ContentBlock = z.discriminatedUnion("type", [
  TextBlock,
  ThinkingBlock,
  RedactedThinkingBlock,
  ToolUseBlock,
  ToolResultBlock,
]);
export type ContentBlock = z.infer<typeof ContentBlock>;

export const Message = z.object({
  role: z.enum(["user", "assistant"]),
  content: z.union([z.string(), z.array(ContentBlock)]),
});
export type Message = z.infer<typeof Message>;

/** Token counts for one request, or summed over many. All four fields are always present. */
export const Usage = z.object({
  inputTokens: z.number().int().nonnegative(),
  outputTokens: z.number().int().nonnegative(),
  cacheCreationInputTokens: z.number().int().nonnegative(),
  cacheReadInputTokens: z.number().int().nonnegative(),
});
export type Usage = z.infer<typeof Usage>;

export function emptyUsage(): Usage {
  return { inputTokens: 0, outputTokens: 0, cacheCreationInputTokens: 0, cacheReadInputTokens: 0 };
}

export function addUsage(a: Usage, b: Usage): Usage {
  return {
    inputTokens: a.inputTokens + b.inputTokens,
    outputTokens: a.outputTokens + b.outputTokens,
    cacheCreationInputTokens: a.cacheCreationInputTokens + b.cacheCreationInputTokens,
    cacheReadInputTokens: a.cacheReadInputTokens + b.cacheReadInputTokens,
  };
}

/** Every input token of a request, cached or not. */
export function totalInputTokens(usage: Usage): number {
  return usage.inputTokens + usage.cacheCreationInputTokens + usage.cacheReadInputTokens;
}

/** A tool as the model sees it: name, description and a JSON schema for its input. */
export interface ToolSpec {
  name: string;
  description: string;
  inputSchema: Record<string, unknown>;
}

export interface ModelRequest {
  /** System prompt; kept first and stable so it can be cached. */
  system: string;
  messages: Message[];
  /**
   * The tools offered. A run hands the same specs to every request of a conversation, frozen
   * like its recorded messages: an adapter that needs another shape makes its own objects.
   */
  tools: ToolSpec[];
  maxTokens: number;
  /** Extended thinking budget in tokens; omitted means no thinking. */
  thinking?: { budgetTokens: number };
  /** Force or forbid tool use. Defaults to letting the model choose. */
  toolChoice?: "auto" | "any" | "none";
  /**
   * Blocks that should end a cached prefix, besides the provider's own choice (the system prompt
   * and the newest turns), most important first. Context pruning names the end of what it left
   * unchanged, so the request right after a pruning still reads that prefix from the cache.
   * Providers without prompt caching ignore it; a position that does not exist is skipped.
   */
  cacheBreakpoints?: CacheBreakpoint[];
}

/** A content block by position: `messages[message].content[block]`. */
export interface CacheBreakpoint {
  message: number;
  block: number;
}

export type StopReason = "end_turn" | "tool_use" | "max_tokens" | "stop_sequence" | "pause_turn" | "refusal" | string;

export interface ModelResponse {
  id: string;
  model: string;
  content: ContentBlock[];
  stopReason: StopReason;
  usage: Usage;
}

/**
 * Parts of a streamed response. A `retry` part means everything streamed since the last
 * `retry` (or the start) is void: the request is being sent again.
 */
export type ModelStreamEvent =
  | { type: "text_delta"; index: number; text: string }
  | { type: "thinking_delta"; index: number; thinking: string }
  | { type: "tool_input_delta"; index: number; partialJson: string }
  | { type: "block_start"; index: number; block: ContentBlock }
  | { type: "block_stop"; index: number }
  | { type: "retry"; attempt: number; delayMs: number; reason: string; status?: number }
  | AttemptUsagePart
  | { type: "response"; response: ModelResponse };

/**
 * Tokens spent on an attempt that did not produce the response: it was aborted, or its stream
 * broke after the server had started answering and the request was sent again. The usage is the
 * server's own (from the stream's start and delta events, plus what streamed since) when the
 * stream got that far; otherwise (`estimated`) it is the estimated input of what was sent.
 * Emitted before the `retry` part or before the `AbortedError` is thrown.
 */
export interface AttemptUsagePart {
  type: "attempt_usage";
  usage: Usage;
  /** `aborted` by the signal; `retried` after a broken stream; `failed` when that was the last attempt. */
  outcome: "aborted" | "retried" | "failed";
  estimated: boolean;
  /** The model as the provider names it in responses (e.g. `claude-sonnet-5-5`). */
  model: string;
  requestId?: string;
}

export interface ModelCallOptions {
  signal?: AbortSignal;
}

/**
 * The plug-in point for language model providers. `stream` yields parts as they arrive and
 * ends with exactly one `response` part; it throws `ModelError` when the request fails,
 * `ModelUnavailableError` (code `model_unavailable`) when retries on overload, rate limits, server
 * errors or network failures are spent, and `AbortedError` when the signal fires. Tokens spent
 * on attempts that produced no response are reported as `attempt_usage` parts.
 *
 * @example
 * for await (const part of model.stream(request, { signal })) {
 *   if (part.type === "text_delta") process.stdout.write(part.text);
 *   if (part.type === "response") console.log(part.response.usage);
 * }
 */
export interface Model {
  /** Provider and model id, e.g. `anthropic:claude-sonnet-5-5`. */
  readonly id: string;
  /** Context window in tokens, used for pruning decisions. */
  readonly contextWindow: number;
  stream(request: ModelRequest, options?: ModelCallOptions): AsyncIterable<ModelStreamEvent>;
  /**
   * Exact input tokens `request` would use, when the provider can count them without running
   * the model. Optional: without it, keen estimates from the last response's usage.
   */
  countTokens?(request: ModelRequest, options?: ModelCallOptions): Promise<number>;
}

/** Drains a model stream and returns its final response. */
export async function collectResponse(stream: AsyncIterable<ModelStreamEvent>): Promise<ModelResponse> {
  let response: ModelResponse | undefined;
  for await (const part of stream) if (part.type === "response") response = part.response;
  if (!response) throw new Error("Model stream ended without a response");
  return response;
}
