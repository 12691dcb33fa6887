import * as z from "zod";
import { ConfigError, isKeenError, KeenError } from "../errors.js";
import type { ContextPrunedEvent } from "../events.js";
import {
  totalInputTokens,
  type AttemptUsagePart,
  type CacheBreakpoint,
  type ContentBlock,
  type ModelResponse,
  type TextBlock,
  type Message,
  type Model,
  type ModelRequest,
  type ToolResultBlock,
  type ToolUseBlock,
  type Usage,
} from "../model/model.js";
import { blockText, estimateMessageTokens, estimateRequestTokens, estimateTextTokens } from "../model/estimate.js";
import { textOf } from "./conversation.js";

export { estimateMessageTokens, estimateRequestTokens, estimateTextTokens };

/**
 * When and how far a conversation is pruned. Fractions are of the context window.
 */
export const ContextSettings = z
  .object({
    /** Context window in tokens; defaults to the model's `contextWindow`. */
    contextWindow: z.number().int().positive().optional(),
    /** Prune when the next request would fill this fraction of the window. Default 0.8. */
    pruneAt: z.number().gt(0).max(1).default(0.8),
    /** Prune down to this fraction of the window. Default 0.5. */
    target: z.number().gt(0).max(1).default(0.5),
    /** The newest assistant turns (with their tool results) that are never pruned. Default 2, at least 1. */
    keepTurns: z.number().int().min(1).default(2),
    /**
     * Who writes the summary of compacted turns: `structured` (default) lists the steps without a
     * model call; `model` asks the model in a separate request (falling back to `structured` if it fails).
     */
    summary: z.enum(["structured", "model"]).default("structured"),
  })
  .refine((s) => s.target < s.pruneAt, { message: "`target` must be below `pruneAt`", path: ["target"] });
export type ContextSettings = z.input<typeof ContextSettings>;

/** Marks the text block that holds the summary of compacted turns, so a later compaction extends it. */
export const COMPACTED_SUMMARY_HEADER = "[Earlier conversation compacted to save context]";
const CLEARED_PREFIX = "[tool result cleared to save context";
/** Longest summary of compacted turns; older lines are dropped first. */
const SUMMARY_LIMIT_CHARS = 12_000;

/** Whether an assistant message carries thinking that must be passed back unchanged. */
export function isThinkingTurn(message: Message): boolean {
  return message.role === "assistant" && typeof message.content !== "string" && message.content.some((b) => b.type === "thinking" || b.type === "redacted_thinking");
}

/**
 * Checks that a message list is acceptable to the Messages API: it starts with a user message,
 * roles alternate, and every `tool_use` is answered by a `tool_result` in the next message (and
 * only there). Returns a description of the first problem, or null.
 *
 * @example
 * const problem = conversationProblem(messages);
 * if (problem) throw new Error(problem);
 */
export function conversationProblem(messages: readonly Message[]): string | null {
  if (messages.length === 0) return "the conversation is empty";
  let open: string[] = [];
  for (const [i, message] of messages.entries()) {
    const expected = i % 2 === 0 ? "user" : "assistant";
    if (message.role !== expected) return `message ${i} is from the ${message.role}, expected the ${expected}`;
    const blocks = typeof message.content === "string" ? [] : message.content;
    if (typeof message.content === "string" ? !message.content : blocks.length === 0) return `message ${i} is empty`;
    if (message.role === "user") {
      const answered = blocks.filter((b): b is ToolResultBlock => b.type === "tool_result").map((b) => b.tool_use_id);
      const stray = answered.find((id) => !open.includes(id));
      if (stray) return `message ${i} answers tool_use ${stray}, which the previous message did not call`;
      const unanswered = open.filter((id) => !answered.includes(id));
      if (unanswered.length) return `message ${i} leaves tool_use ${unanswered.join(", ")} unanswered`;
      open = [];
    } else {
      if (blocks.some((b) => b.type === "tool_result")) return `message ${i} is from the assistant but holds a tool_result`;
      open = blocks.filter((b): b is ToolUseBlock => b.type === "tool_use").map((b) => b.id);
    }
  }
  return null;
}

export interface PruneOptions {
  /** Tokens of the request as it stands (real or estimated). */
  tokens: number;
  /** Tokens to get down to. */
  target: number;
  /** The newest assistant turns (and the tool results answering them) to leave untouched. At least 1. */
  keepTurns: number;
  /** Real tokens per estimated token, from the last response's usage. Default 1. */
  scale?: number;
}

export interface PruneResult {
  /** The pruned conversation; messages that were not changed are the same objects as before. */
  messages: Message[];
  /** `tool_result` blocks whose content was replaced by a placeholder. */
  clearedToolResults: number;
  /** Messages removed and folded into the summary at the start of the conversation. */
  compactedMessages: number;
  tokensBefore: number;
  /** Estimated from what was removed. */
  tokensAfter: number;
}

/**
 * Shrinks a conversation towards `target` tokens without invalidating it: first the content of
 * old `tool_result` blocks is replaced by a one-line placeholder (oldest first), then, if that
 * is not enough, the oldest turns after the first message are folded into a summary appended to
 * the first message. Assistant turns are never edited: each is kept exactly as received (so
 * thinking signatures still verify) or removed whole, and the newest `keepTurns` turns are kept.
 * The input is not modified.
 *
 * @example
 * const { messages: pruned, clearedToolResults } = pruneConversation(messages, { tokens: 170_000, target: 100_000, keepTurns: 2 });
 */
export function pruneConversation(messages: readonly Message[], options: PruneOptions): PruneResult {
  if (!Number.isInteger(options.keepTurns) || options.keepTurns < 1) throw new ConfigError("pruneConversation(): `keepTurns` must be a positive integer");
  const scale = options.scale && options.scale > 0 ? options.scale : 1;
  const out = [...messages];
  let tokens = options.tokens;
  const result = (clearedToolResults: number, compactedMessages: number): PruneResult => ({
    messages: out,
    clearedToolResults,
    compactedMessages,
    tokensBefore: options.tokens,
    tokensAfter: Math.max(0, Math.round(tokens)),
  });
  if (tokens <= options.target) return result(0, 0);

  const assistantIndexes = out.flatMap((m, i) => (m.role === "assistant" ? [i] : []));
  // Everything from the oldest kept assistant turn on is left alone.
  const protectedFrom = assistantIndexes.length >= options.keepTurns ? assistantIndexes[assistantIndexes.length - options.keepTurns]! : 0;

  // 1. Clear old tool results, oldest first.
  let cleared = 0;
  for (let i = 1; i < protectedFrom && tokens > options.target; i++) {
    const message = out[i]!;
    if (message.role !== "user" || typeof message.content === "string") continue;
    const calls = toolCallsOf(out[i - 1]);
    let changed = false;
    const content = message.content.map((block) => {
      if (block.type !== "tool_result" || tokens <= options.target) return block;
      const saved = clearingSaves(block, calls.get(block.tool_use_id));
      if (saved <= 0) return block;
      const placeholder = clearedPlaceholder(calls.get(block.tool_use_id), blockText(block));
      tokens -= saved * scale;
      cleared++;
      changed = true;
      return { ...block, content: placeholder };
    });
    if (changed) out[i] = { role: "user", content };
  }
  if (tokens <= options.target) return result(cleared, 0);

  // 2. Fold the oldest turns into a summary: drop out[1..cut) where out[cut] is an assistant turn,
  //    so the first message is followed by an assistant turn and no tool_use loses its result.
  const candidates = assistantIndexes.filter((i) => i >= 3 && i <= protectedFrom && out[i - 1]?.role === "user");
  if (candidates.length === 0 || out[0]?.role !== "user") return result(cleared, 0);
  const removedTokens = prefixSums(out.map(estimateMessageTokens));
  const results = toolResultsOf(messages);
  const { blocks: firstBlocks, summaryIndex, earlier } = splitFirst(out[0]!);
  const firstWithoutSummary = estimateMessageTokens(out[0]!) - (summaryIndex >= 0 ? estimateTextTokens(blockText(firstBlocks[summaryIndex]!)) : 0);
  // Summary length for each cut, grown line by line instead of rebuilt (conversations can be long).
  let bodyChars = earlier.length ? earlier.join("\n").length : -1;
  let next = 1;
  let chosen: { cut: number; saved: number } | undefined;
  for (const cut of candidates) {
    for (; next < cut; next++) for (const line of summaryLines(out[next]!, results)) bodyChars += line.length + 1;
    const summaryTokens = estimateTextTokens(`${SUMMARY_INTRO}\n`) + Math.ceil(Math.min(Math.max(bodyChars, 0), SUMMARY_LIMIT_CHARS + 32) / 4);
    const saved = removedTokens[cut]! - removedTokens[1]! + estimateMessageTokens(out[0]!) - (firstWithoutSummary + summaryTokens);
    if (saved <= 0) continue;
    const enough = tokens - saved * scale <= options.target;
    if (!chosen || saved > chosen.saved || enough) chosen = { cut, saved };
    if (enough) break;
  }
  if (!chosen) return result(cleared, 0);
  // Build the chosen summary for real and check that it does save what it should.
  const lines = [...earlier, ...out.slice(1, chosen.cut).flatMap((message) => summaryLines(message, results))];
  const first = withSummaryText(out[0]!, `${SUMMARY_INTRO}\n${capSummary(lines.join("\n"))}`);
  const saved = removedTokens[chosen.cut]! - removedTokens[1]! + estimateMessageTokens(out[0]!) - estimateMessageTokens(first);
  if (saved <= 0) return result(cleared, 0);
  tokens -= saved * scale;
  out.splice(0, chosen.cut, first);
  return result(cleared, chosen.cut - 1);
}

function prefixSums(values: number[]): number[] {
  const sums = [0];
  for (const value of values) sums.push(sums.at(-1)! + value);
  return sums;
}

function toolCallsOf(message: Message | undefined): Map<string, ToolUseBlock> {
  const calls = new Map<string, ToolUseBlock>();
  if (message?.role === "assistant" && typeof message.content !== "string") {
    for (const block of message.content) if (block.type === "tool_use") calls.set(block.id, block);
  }
  return calls;
}

/** Estimated tokens clearing a tool result would save: none when it is cleared already or tiny. */
function clearingSaves(block: ToolResultBlock, call: ToolUseBlock | undefined): number {
  const text = blockText(block);
  if (text.startsWith(CLEARED_PREFIX)) return 0;
  return estimateTextTokens(text) - estimateTextTokens(clearedPlaceholder(call, text));
}

/** `[tool result cleared to save context: read_file src/x.ts, 12 kB]` */
function clearedPlaceholder(call: ToolUseBlock | undefined, text: string): string {
  const what = call ? [call.name, inputHint(call.input)].filter(Boolean).join(" ") : "earlier tool call";
  return `${CLEARED_PREFIX}: ${what}, ${formatSize(Buffer.byteLength(text))}]`;
}

/** The first short string in a tool input (a path, a pattern, a command), to say what a call was about. */
function inputHint(input: unknown): string {
  if (!input || typeof input !== "object") return "";
  for (const value of Object.values(input as Record<string, unknown>)) {
    if (typeof value === "string" && value.trim()) return clip(value.trim().split("\n")[0]!, 80);
  }
  return "";
}

function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  return `${Math.round(bytes / 1024)} kB`;
}

function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** The first line of a listed summary, after the header. */
const SUMMARY_INTRO = `${COMPACTED_SUMMARY_HEADER}\nWhat happened before the turns that follow, oldest first:`;

/** The first message's blocks, where its summary block is (-1 for none), and that summary's lines after its two header lines. */
function splitFirst(first: Message): { blocks: ContentBlock[]; summaryIndex: number; earlier: string[] } {
  const blocks: ContentBlock[] = typeof first.content === "string" ? [{ type: "text", text: first.content }] : [...first.content];
  const summaryIndex = blocks.findIndex((b) => b.type === "text" && b.text.startsWith(COMPACTED_SUMMARY_HEADER));
  const earlier = summaryIndex >= 0 ? (blocks[summaryIndex] as TextBlock).text.split("\n").slice(2) : [];
  return { blocks, summaryIndex, earlier };
}

/** `first` with its summary block replaced by `text`, or with `text` appended when it has none. */
function withSummaryText(first: Message, text: string): Message {
  const { blocks, summaryIndex } = splitFirst(first);
  if (summaryIndex >= 0) blocks[summaryIndex] = { type: "text", text };
  else blocks.push({ type: "text", text });
  return { role: "user", content: blocks };
}

/** Keeps the newest lines of a long summary: they matter most to the work in progress. */
function capSummary(body: string): string {
  if (body.length <= SUMMARY_LIMIT_CHARS) return body;
  return `(older steps omitted)\n${body.slice(body.length - SUMMARY_LIMIT_CHARS).replace(/^[^\n]*\n/, "")}`;
}

function toolResultsOf(messages: readonly Message[]): Map<string, ToolResultBlock> {
  const results = new Map<string, ToolResultBlock>();
  for (const message of messages) {
    if (message.role === "user" && typeof message.content !== "string") {
      for (const block of message.content) if (block.type === "tool_result") results.set(block.tool_use_id, block);
    }
  }
  return results;
}

/** Summary lines for one compacted message: what was said, and each tool call with how it went. */
function summaryLines(message: Message, results: ReadonlyMap<string, ToolResultBlock>): string[] {
  const blocks: ContentBlock[] = typeof message.content === "string" ? [{ type: "text", text: message.content }] : message.content;
  const lines: string[] = [];
  for (const block of blocks) {
    if (block.type === "text" && block.text.trim()) {
      lines.push(`- ${message.role === "user" ? "User" : "You"}: ${clip(block.text.trim().replace(/\s+/g, " "), 400)}`);
    } else if (block.type === "tool_use") {
      const result = results.get(block.id);
      const outcome = !result ? "no result" : result.is_error ? `error: ${clip(blockText(result).split("\n")[0] ?? "", 160)}` : `ok, ${formatSize(Buffer.byteLength(blockText(result)))}`;
      lines.push(`- You called ${block.name}(${clip(JSON.stringify(block.input ?? {}), 200)}) → ${outcome}`);
    }
  }
  return lines;
}

/** What one pruning did: the `context.pruned` event without what the run stamps on it. */
export type ContextPruneReport = Omit<ContextPrunedEvent, "type" | "protocol" | "runId" | "agentId" | "seq" | "at">;

/**
 * Follows the context size of one agent's conversation across requests (and phases) and
 * prunes the conversation in place when the next request would come near the window.
 *
 * The size of the last request is known exactly from its usage (input + cache write + cache
 * read); what was added since is estimated, scaled by how far the estimate was off last time.
 * When nothing is known yet and the estimate is large, the model's `countTokens` is asked.
 *
 * @example
 * const context = new ContextTracker(model, { contextWindow: 200_000 });
 * await runConversation({ ...options, context });
 * console.log(context.contextTokens);
 */
export class ContextTracker {
  readonly contextWindow: number;
  readonly pruneAt: number;
  readonly target: number;
  readonly keepTurns: number;
  readonly summary: "structured" | "model";
  /** Input tokens of the last request (uncached + cache write + cache read), or undefined before the first. */
  contextTokens: number | undefined;
  private estimateAtLast = 0;
  private scale = 1;

  constructor(
    private readonly model: Model,
    settings: ContextSettings = {},
  ) {
    const parsed = ContextSettings.safeParse(settings);
    if (!parsed.success) throw new ConfigError(`Invalid context settings: ${parsed.error.issues.map((i) => `${i.path.join(".") || "settings"}: ${i.message}`).join("; ")}`);
    this.contextWindow = parsed.data.contextWindow ?? model.contextWindow;
    if (!Number.isInteger(this.contextWindow) || this.contextWindow <= 0) throw new ConfigError(`Invalid context window ${this.contextWindow} for ${model.id}`);
    this.pruneAt = parsed.data.pruneAt;
    this.target = parsed.data.target;
    this.keepTurns = parsed.data.keepTurns;
    this.summary = parsed.data.summary;
  }

  /** Throws `ConfigError` when `maxTokens` of answer leave no room for the conversation in the window. */
  checkMaxTokens(maxTokens: number): void {
    if (maxTokens >= this.contextWindow) {
      throw new ConfigError(`maxTokens (${maxTokens}) must be below the context window (${this.contextWindow} tokens): the answer has to fit next to the conversation`);
    }
  }

  /** The model's exact count, or undefined when it cannot count or counting failed (the estimate stands in). */
  private async count(request: ModelRequest, signal: AbortSignal | undefined): Promise<number | undefined> {
    if (!this.model.countTokens) return undefined;
    try {
      return await this.model.countTokens(request, signal ? { signal } : {});
    } catch (error) {
      if (signal?.aborted || isKeenError(error, "aborted")) throw error;
      return undefined;
    }
  }

  /** Records the usage of a request that was just answered. */
  record(request: Pick<ModelRequest, "system" | "tools" | "messages">, usage: Usage): void {
    this.contextTokens = totalInputTokens(usage);
    this.estimateAtLast = estimateRequestTokens(request);
    if (this.contextTokens > 0 && this.estimateAtLast > 0) this.scale = this.contextTokens / this.estimateAtLast;
  }

  /** The expected input tokens of `request`: the last real size plus an estimate of what changed. */
  expectedTokens(request: Pick<ModelRequest, "system" | "tools" | "messages">): number {
    const estimate = estimateRequestTokens(request);
    if (this.contextTokens === undefined) return Math.round(estimate * this.scale);
    return Math.max(0, Math.round(this.contextTokens + (estimate - this.estimateAtLast) * this.scale));
  }

  /** The request size at which pruning starts: `pruneAt` of the window, or less when `maxTokens` needs the room. */
  threshold(maxTokens: number): number {
    return Math.min(this.pruneAt * this.contextWindow, this.contextWindow - maxTokens);
  }

  /**
   * How many estimated tokens (one per four characters) the tool results of the turn just
   * appended to `request.messages` may take in all. The newest `keepTurns` turns are never
   * pruned, so each gets a share of the pruning target: whatever the tools return, pruning can
   * always bring the conversation back under the threshold, and a request never outgrows the window.
   * Results over the budget are cut by `runConversation` (see `capToolResults`).
   */
  toolOutputBudget(request: Pick<ModelRequest, "system" | "tools" | "messages" | "maxTokens">): number {
    const { messages } = request;
    const threshold = this.threshold(request.maxTokens) / this.scale;
    const target = Math.min(this.target * this.contextWindow / this.scale, threshold);
    const base = estimateRequestTokens({ system: request.system, tools: request.tools, messages: messages.slice(0, 1) });
    const assistants = messages.flatMap((m, i) => (i > 0 && m.role === "assistant" ? [i] : []));
    const keptFrom = assistants.length >= this.keepTurns ? assistants[assistants.length - this.keepTurns]! : Math.max(1, assistants[0] ?? 1);
    const kept = messages.slice(keptFrom).reduce((sum, m) => sum + estimateMessageTokens(m), 0);
    const turn = messages.length > 1 ? estimateMessageTokens(messages.at(-1)!) : 0;
    // A fair share per kept turn, and never more than what is left beside the turns kept already.
    // At most half the gap between target and threshold, too: after a pruning at least two turns
    // fit before the next, and every request between prunings reads the one before it from the cache.
    const share = Math.min((target - base) / this.keepTurns, (threshold - target) / 2) - turn;
    const left = target - base - kept;
    return Math.max(MIN_TOOL_OUTPUT_TOKENS, Math.floor(Math.min(share, left)));
  }

  /**
   * Prunes `request.messages` in place when the request would pass the threshold (which leaves
   * room for `maxTokens` of output), and names the cache breakpoints that keep the prefix up to
   * the earliest changed block readable. Returns what was done, or null when nothing was needed.
   * Throws a `context_overflow` error when even pruning cannot make the request fit the window.
   */
  async beforeRequest(
    request: ModelRequest,
    options: { signal?: AbortSignal; onAttemptUsage?: (part: AttemptUsagePart) => void } = {},
  ): Promise<(ContextPruneReport & { summaryResponse?: ModelResponse }) | null> {
    this.checkMaxTokens(request.maxTokens);
    const threshold = this.threshold(request.maxTokens);
    let tokens = this.expectedTokens(request);
    // Before the first answer only an uncalibrated estimate exists; ask for the real count when it matters.
    if (this.contextTokens === undefined && tokens >= threshold / 2) {
      const counted = await this.count(request, options.signal);
      if (counted !== undefined) {
        tokens = counted;
        this.contextTokens = counted;
        this.estimateAtLast = estimateRequestTokens(request);
        if (this.estimateAtLast > 0) this.scale = counted / this.estimateAtLast;
      }
    }
    if (tokens < threshold) {
      this.nameBreakpoints(request, []);
      this.fitOutput(request, tokens);
      return null;
    }

    const target = Math.min(this.target * this.contextWindow, threshold);
    const before = [...request.messages];
    let pruned = pruneConversation(request.messages, { tokens, target, keepTurns: this.keepTurns, scale: this.scale });
    // Turns kept whole can themselves outweigh the window (long thinking, large tool inputs):
    // then only the newest turn, which the model is working on, stays untouched.
    if (pruned.tokensAfter >= threshold && this.keepTurns > 1) {
      const again = pruneConversation(pruned.messages, { tokens: pruned.tokensAfter, target, keepTurns: 1, scale: this.scale });
      pruned = {
        ...again,
        tokensBefore: pruned.tokensBefore,
        clearedToolResults: pruned.clearedToolResults + again.clearedToolResults,
        compactedMessages: pruned.compactedMessages + again.compactedMessages,
      };
    }
    if (pruned.clearedToolResults === 0 && pruned.compactedMessages === 0) {
      this.nameBreakpoints(request, []);
      this.fitOutput(request, tokens);
      return null;
    }
    let summaryResponse: ModelResponse | undefined;
    if (pruned.compactedMessages > 0 && this.summary === "model") {
      summaryResponse = await this.writeSummary(request.messages.slice(0, 1 + pruned.compactedMessages), options.signal, options.onAttemptUsage);
      const text = summaryResponse ? textOf(summaryResponse.content) : "";
      if (text) pruned.messages[0] = withSummaryText(pruned.messages[0]!, `${COMPACTED_SUMMARY_HEADER}\nSummary of what happened before the turns that follow:\n${text}`);
    }
    request.messages.splice(0, request.messages.length, ...pruned.messages);
    this.nameBreakpoints(request, before);

    // The exact size after pruning, when the model can count it, keeps later estimates honest.
    const tokensAfter = (await this.count(request, options.signal)) ?? pruned.tokensAfter;
    this.contextTokens = tokensAfter;
    this.estimateAtLast = estimateRequestTokens(request);
    this.fitOutput(request, tokensAfter);
    return {
      clearedToolResults: pruned.clearedToolResults,
      compactedMessages: pruned.compactedMessages,
      tokensBefore: Math.round(tokens),
      tokensAfter: Math.round(tokensAfter),
      ...(summaryResponse ? { summaryResponse } : {}),
    };
  }

  /**
   * Input and output together never pass the window: when the input is too large for the full
   * `maxTokens`, the answer gets what is left, down to a floor; below that the request is refused.
   */
  private fitOutput(request: ModelRequest, tokens: number): void {
    const margin = Math.ceil(this.contextWindow * WINDOW_MARGIN);
    const room = this.contextWindow - Math.ceil(tokens) - margin;
    if (request.maxTokens <= room) return;
    const floor = (request.thinking?.budgetTokens ?? 0) + MIN_OUTPUT_TOKENS;
    if (room < floor) {
      throw new KeenError(
        "context_overflow",
        `The conversation needs about ${Math.ceil(tokens)} tokens, which leaves no room for an answer in the ${this.contextWindow}-token context window even after pruning`,
      );
    }
    request.maxTokens = room;
  }

  /**
   * Names cache breakpoints for `request`. Tool results are cleared oldest first, so the next
   * pruning will change the first result that clearing would still shrink: the block before it
   * ends a prefix that stays as it is, and every request caches it. Right after a pruning
   * (`before` holds the messages as they were) the last block before the earliest change is named
   * too, so the pruned request reads what the requests before it cached.
   */
  private nameBreakpoints(request: ModelRequest, before: readonly Message[]): void {
    const points: CacheBreakpoint[] = [];
    const unchanged = before.length ? earliestChange(before, request.messages) : undefined;
    if (unchanged) points.push(unchanged);
    const stable = beforeNextClearing(request.messages);
    if (stable && !points.some((p) => p.message === stable.message && p.block === stable.block)) points.push(stable);
    if (points.length) request.cacheBreakpoints = points;
    else delete request.cacheBreakpoints;
  }

  /**
   * Asks the model, in a request of its own, to summarise `messages` (the first message and the
   * turns being compacted). Returns undefined when the request fails: the structured summary stays.
   */
  private async writeSummary(messages: Message[], signal: AbortSignal | undefined, onAttemptUsage?: (part: AttemptUsagePart) => void): Promise<ModelResponse | undefined> {
    const request: ModelRequest = {
      system: SUMMARY_SYSTEM_PROMPT,
      messages: [{ role: "user", content: `${transcript(messages)}\n\nWrite the summary now.` }],
      tools: [],
      maxTokens: SUMMARY_MAX_TOKENS,
    };
    try {
      let response: ModelResponse | undefined;
      for await (const part of this.model.stream(request, signal ? { signal } : {})) {
        // Tokens of an aborted or broken summary request are spent all the same.
        if (part.type === "attempt_usage") onAttemptUsage?.(part);
        else if (part.type === "response") response = part.response;
      }
      return response;
    } catch (error) {
      if (signal?.aborted || isKeenError(error, "aborted")) throw error;
      return undefined;
    }
  }
}

const SUMMARY_MAX_TOKENS = 2048;
/** Least tool output a turn is given, however full the window (estimated tokens). */
const MIN_TOOL_OUTPUT_TOKENS = 256;
/** Least room for an answer before a request is refused as too large. */
const MIN_OUTPUT_TOKENS = 1024;
/** Share of the window kept free for estimation error when fitting the output limit. */
const WINDOW_MARGIN = 0.02;

function blocksOf(message: Message): readonly unknown[] {
  return typeof message.content === "string" ? [message.content] : message.content;
}

/** The position of the last block before the first that differs (by identity) between two conversations. */
function earliestChange(before: readonly Message[], after: readonly Message[]): CacheBreakpoint | undefined {
  let last: CacheBreakpoint | undefined;
  for (const [i, message] of after.entries()) {
    const old = before[i];
    if (old === message) {
      last = { message: i, block: blocksOf(message).length - 1 };
      continue;
    }
    if (!old || old.role !== message.role || typeof old.content === "string" || typeof message.content === "string") return last;
    const oldBlocks = old.content;
    for (const [j, block] of message.content.entries()) {
      if (oldBlocks[j] !== block) return last;
      last = { message: i, block: j };
    }
    return last;
  }
  return last;
}

/**
 * The block before the first tool result that clearing would still shrink (the first message
 * aside), or undefined when there is none.
 */
function beforeNextClearing(messages: readonly Message[]): CacheBreakpoint | undefined {
  for (let i = 1; i < messages.length; i++) {
    const message = messages[i]!;
    if (message.role !== "user" || typeof message.content === "string") continue;
    const calls = toolCallsOf(messages[i - 1]);
    const j = message.content.findIndex((block) => block.type === "tool_result" && clearingSaves(block, calls.get(block.tool_use_id)) > 0);
    if (j > 0) return { message: i, block: j - 1 };
    if (j === 0) return { message: i - 1, block: blocksOf(messages[i - 1]!).length - 1 };
  }
  return undefined;
}/** Longest tool result shown to the model when it writes a summary. */
const TRANSCRIPT_RESULT_CHARS = 1_500;

const SUMMARY_SYSTEM_PROMPT = `You condense the earlier part of a software engineering agent's working session so the agent can continue without it.
The transcript starts with the agent's task (which the agent keeps) and may hold an earlier summary. Write a summary, in plain text, of at most 400 words that keeps what the agent needs to go on: what it learned about the code (files, functions, facts with their paths), what it changed, commands it ran and their outcomes, decisions made and why, and what was still open. Do not restate the task. Do not invent anything.`;

/** The conversation as plain text for the summary request, with long tool results cut. */
function transcript(messages: Message[]): string {
  const calls = new Map<string, ToolUseBlock>();
  const parts: string[] = [];
  for (const [i, message] of messages.entries()) {
    const blocks: ContentBlock[] = typeof message.content === "string" ? [{ type: "text", text: message.content }] : message.content;
    for (const block of blocks) {
      if (block.type === "text" && block.text.trim()) {
        const label = i === 0 ? (block.text.startsWith(COMPACTED_SUMMARY_HEADER) ? "EARLIER SUMMARY" : "TASK") : message.role === "user" ? "USER" : "AGENT";
        parts.push(`${label}: ${block.text.trim()}`);
      } else if (block.type === "tool_use") {
        calls.set(block.id, block);
        parts.push(`AGENT CALLS ${block.name} ${JSON.stringify(block.input ?? {})}`);
      } else if (block.type === "tool_result") {
        const text = blockText(block);
        const cut = text.length > TRANSCRIPT_RESULT_CHARS ? `${text.slice(0, TRANSCRIPT_RESULT_CHARS)}\n[… ${text.length - TRANSCRIPT_RESULT_CHARS} more characters]` : text;
        parts.push(`RESULT of ${calls.get(block.tool_use_id)?.name ?? "tool"}${block.is_error ? " (error)" : ""}:\n${cut}`);
      }
    }
  }
  return parts.join("\n\n");
}
