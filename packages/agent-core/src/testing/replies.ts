/** One block of a scripted reply. */
export type ReplyBlock =
  | { type: "text"; text: string }
  | { type: "tool_use"; name: string; input: unknown; id?: string }
  | { type: "thinking"; thinking: string }
  | { type: "redacted_thinking" };

/** Something to go wrong with one HTTP exchange. */
export interface Fault {
  /** Answer with this HTTP status and an error body instead of a message. */
  status?: number;
  /** The error body's `error.type`, e.g. `overloaded_error`. Derived from the status when omitted. */
  errorType?: string;
  message?: string;
  /** Seconds for a `retry-after` header. */
  retryAfter?: number;
  /** Wait this long before answering. */
  delayMs?: number;
  /** Wait this long between SSE events. */
  eventDelayMs?: number;
  /** Destroy the connection after this many SSE events (a dropped stream). */
  cutAfterEvents?: number;
}

/** What the server answers to one request. */
export interface ScriptedReply {
  content?: ReplyBlock[];
  /** Default: `tool_use` when the content has a tool call, else `end_turn`. */
  stopReason?: "end_turn" | "tool_use" | "max_tokens" | "stop_sequence" | "pause_turn" | "refusal";
  fault?: Fault;
}

const ERROR_TYPES: Record<number, string> = {
  400: "invalid_request_error",
  401: "authentication_error",
  403: "permission_error",
  404: "not_found_error",
  413: "request_too_large",
  429: "rate_limit_error",
  500: "api_error",
  529: "overloaded_error",
};

export function errorTypeFor(status: number): string {
  return ERROR_TYPES[status] ?? (status >= 500 ? "api_error" : "invalid_request_error");
}

/**
 * Builders for scripted replies.
 *
 * @example
 * const script = [
 *   reply.toolUse("read_file", { path: "README.md" }),
 *   reply.error(529),                      // overloaded: the client retries
 *   reply.cut(3, reply.text("Done.")),     // stream dropped after 3 events
 *   reply.text("Done."),
 * ];
 */
export const reply = {
  /** A plain text answer (ends the turn). */
  text: (text: string): ScriptedReply => ({ content: [{ type: "text", text }] }),
  /** A tool call, optionally preceded by some text. */
  toolUse: (name: string, input: unknown, options: { text?: string; id?: string } = {}): ScriptedReply => ({
    content: [
      ...(options.text ? [{ type: "text" as const, text: options.text }] : []),
      { type: "tool_use", name, input, ...(options.id ? { id: options.id } : {}) },
    ],
  }),
  /** Several tool calls in one turn. */
  toolUses: (...calls: Array<[name: string, input: unknown]>): ScriptedReply => ({
    content: calls.map(([name, input]) => ({ type: "tool_use" as const, name, input })),
  }),
  /** Any blocks, e.g. thinking followed by a tool call. */
  blocks: (...content: ReplyBlock[]): ScriptedReply => ({ content }),
  thinking: (thinking: string): ReplyBlock => ({ type: "thinking", thinking }),
  redactedThinking: (): ReplyBlock => ({ type: "redacted_thinking" }),
  textBlock: (text: string): ReplyBlock => ({ type: "text", text }),
  toolUseBlock: (name: string, input: unknown): ReplyBlock => ({ type: "tool_use", name, input }),
  /** An HTTP error with the API's error body. */
  error: (status: number, errorType?: string, message?: string, options: { retryAfter?: number } = {}): ScriptedReply => ({
    fault: {
      status,
      errorType: errorType ?? errorTypeFor(status),
      message: message ?? `Simulated ${errorType ?? errorTypeFor(status)}`,
      ...(options.retryAfter !== undefined ? { retryAfter: options.retryAfter } : {}),
    },
  }),
  /** `base`, with its SSE stream cut after `afterEvents` events. */
  cut: (afterEvents: number, base: ScriptedReply): ScriptedReply => ({ ...base, fault: { ...base.fault, cutAfterEvents: afterEvents } }),
  /** `base`, answered after a delay (and optionally with a delay between SSE events). */
  slow: (delayMs: number, base: ScriptedReply, eventDelayMs?: number): ScriptedReply => ({
    ...base,
    fault: { ...base.fault, delayMs, ...(eventDelayMs !== undefined ? { eventDelayMs } : {}) },
  }),
};
