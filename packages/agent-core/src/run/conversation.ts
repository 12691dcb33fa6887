import { AbortedError } from "../errors.js";
import type { KeenEventInput } from "../events.js";
import {
  addUsage,
  emptyUsage,
  type ContentBlock,
  type Message,
  type Model,
  type ModelRequest,
  type ModelResponse,
  type ToolResultBlock,
  type TextBlock,
  type ToolUseBlock,
  type Usage,
} from "../model/model.js";
import { executeTool, toolSpec, type Tool } from "../tools/define-tool.js";
import type { Workspace } from "../workspace/workspace.js";
import { estimateRequestTokens, estimateTextTokens } from "../model/estimate.js";
import type { ContextTracker } from "./context.js";

/** Longest tool output put in a `tool.completed` event; the model still gets the whole result. */
const EVENT_OUTPUT_LIMIT = 4_000;

export interface ConversationOptions {
  agentId: string;
  model: Model;
  system: string;
  /** The conversation so far; it is extended in place, turn by turn. */
  messages: Message[];
  /** Tools the model may call now. */
  tools: Tool<any>[];
  /**
   * Tools shown to the model, when they differ from `tools` (default: `tools`). Showing one
   * fixed list keeps the prompt-cache prefix stable; a call to a tool shown but not in `tools`
   * is answered with an error naming the tools that can be used now.
   */
  offeredTools?: Tool<any>[];
  workspace: Workspace;
  emit: (event: KeenEventInput) => void;
  signal: AbortSignal;
  maxTurns: number;
  maxTokens: number;
  thinking?: { budgetTokens: number };
  /** A successful call to one of these tools ends the conversation (phase-closing tools). */
  closingTools?: ReadonlySet<string>;
  /** Usage of this agent before this conversation (for running totals). */
  usageBefore?: Usage;
  /** Called with each response's usage as soon as it arrives. */
  onUsage?: (usage: Usage) => void;
  /**
   * Follows the agent's context size and prunes `messages` in place before a request that would
   * come near the window (a `context.pruned` event reports it). Omit to never prune.
   */
  context?: ContextTracker;
  /**
   * Called after every completed turn, e.g. to snapshot state; `readOnly` is true when every tool
   * the turn ran is a read-only one (or it ran none), so it left the workspace's files as they were;
   * `journaled` is true when every tool it ran is read-only or `journaled` (it wrote files only
   * through `workspace.writeFile`).
   */
  onTurn?: (turn: number, info: { readOnly: boolean; journaled: boolean }) => void | Promise<void>;
  /**
   * Saves the files a turn starts from, before its tools can change them (a crash-safety
   * checkpoint). Started as the turn begins, together with its model request: no tool runs
   * while the request is in flight, and nothing else writes the files meanwhile (the caller's
   * promise), so what it saves is what the turn's tools start from. Awaited before the turn's
   * tools run when one of them may write (a failure then stops the conversation before any tool
   * runs); when none may (or the request fails), `signal` calls it off, as the turn cannot change
   * the files. Always settled before the turn ends.
   */
  checkpoint?: (signal: AbortSignal) => Promise<void>;
  /**
   * Called right before each model request is sent (after pruning) with its estimated size, so a
   * host can check a budget before spending it; throwing stops the conversation with that error.
   */
  beforeModelRequest?: (estimate: RequestEstimate) => void | Promise<void>;
}

/** What a request is about to cost at most: its estimated input and the output it allows. */
export interface RequestEstimate {
  agentId: string;
  /** Estimated input tokens (calibrated on earlier responses when a context tracker is used). */
  inputTokens: number;
  /** The request's output limit: the most output tokens it can cost. */
  maxOutputTokens: number;
}

export interface ConversationResult {
  /** `done`: the model stopped calling tools; `closed`: a closing tool was called; `max_turns`: the turn limit hit. */
  outcome: "done" | "closed" | "max_turns";
  /** The closing tool call, when `outcome` is `closed`. */
  closingCall?: { name: string; input: unknown };
  /** The text of the model's last response. */
  finalText: string;
  turns: number;
  usage: Usage;
}

/**
 * The tool-use loop: ask the model, run the tools it calls, send the results back, until it
 * answers without tools, calls a closing tool, or runs out of turns. Thinking blocks are
 * kept in the assistant turns exactly as received.
 */
export async function runConversation(options: ConversationOptions): Promise<ConversationResult> {
  const { agentId, model, messages, emit, signal } = options;
  const toolsByName = new Map(options.tools.map((tool) => [tool.name, tool]));
  // Sealed like the recorded messages (see toolSpec): every request of the conversation offers the same specs.
  const specs = (options.offeredTools ?? options.tools).map(toolSpec);
  let usage = emptyUsage();
  let agentTotal = options.usageBefore ?? emptyUsage();
  let finalText = "";

  // Every response counts, including a summary written while pruning, and so do attempts that
  // were aborted or broke after the server had started on them (stop reason `aborted`, `retried`, `failed`).
  const account = (response: Pick<ModelResponse, "model" | "id" | "usage" | "stopReason">) => {
    usage = addUsage(usage, response.usage);
    agentTotal = addUsage(agentTotal, response.usage);
    options.onUsage?.(response.usage);
    emit({
      type: "model.usage",
      agentId,
      model: response.model,
      requestId: response.id,
      // The event's own copies: a listener that changes them changes no count of the run.
      usage: { ...response.usage },
      agentTotal: { ...agentTotal },
      stopReason: response.stopReason,
    });
  };

  for (let turn = 1; turn <= options.maxTurns; turn++) {
    if (signal.aborted) throw new AbortedError();
    const notNeeded = new AbortController();
    const checkpoint = options.checkpoint?.(notNeeded.signal);
    // Awaited below; a request that fails first must not leave its rejection unobserved.
    checkpoint?.catch(() => {});
    try {
      const response = await requestResponse(options, specs, account);
      account(response);
      finalText = textOf(response.content);
      if (finalText) emit({ type: "model.text", agentId, text: finalText });
      const assistant: Message = { role: "assistant", content: response.content };

      const calls = response.content.filter((block): block is ToolUseBlock => block.type === "tool_use");
      // Calls to tools not available now are answered without running anything.
      const readOnly = calls.every((call) => toolsByName.get(call.name)?.readOnly !== false);
      const journaled = calls.every((call) => {
        const tool = toolsByName.get(call.name);
        return !tool || tool.readOnly || tool.journaled === true;
      });
      if (readOnly) notNeeded.abort();
      else await checkpoint;
      if (calls.length === 0) {
        messages.push(assistant);
        await options.onTurn?.(turn, { readOnly, journaled });
        if (response.stopReason === "pause_turn") continue;
        return { outcome: "done", finalText, turns: turn, usage };
      }

      const results: ToolResultBlock[] = [];
      let closingCall: ConversationResult["closingCall"];
      for (const call of calls) {
        if (signal.aborted) throw new AbortedError();
        const result = await runToolCall(options, toolsByName, call);
        results.push(result);
        if (!result.is_error && options.closingTools?.has(call.name) && !closingCall) {
          closingCall = { name: call.name, input: call.input };
        }
      }
      // The calls and their results join the conversation together, once every tool has run: a
      // snapshot taken meanwhile (another agent's turn) never holds calls without their results.
      messages.push(assistant);
      const budget = options.context?.toolOutputBudget({ system: options.system, tools: specs, messages, maxTokens: options.maxTokens });
      messages.push({ role: "user", content: budget === undefined ? results : capToolResults(results, calls, budget) });
      await options.onTurn?.(turn, { readOnly, journaled });
      if (closingCall) return { outcome: "closed", closingCall, finalText, turns: turn, usage };
    } finally {
      // No checkpoint outlives its turn (a failed request or an abort calls it off, then waits).
      if (checkpoint) {
        notNeeded.abort();
        await checkpoint.catch(() => {});
      }
    }
  }
  return { outcome: "max_turns", finalText, turns: options.maxTurns, usage };
}

async function requestResponse(
  options: ConversationOptions,
  specs: ReturnType<typeof toolSpec>[],
  onResponseUsage: (response: Pick<ModelResponse, "model" | "id" | "usage" | "stopReason">) => void,
): Promise<ModelResponse> {
  const request: ModelRequest = {
    system: options.system,
    messages: options.messages,
    tools: specs,
    maxTokens: options.maxTokens,
    ...(options.thinking ? { thinking: options.thinking } : {}),
  };
  if (options.context) {
    const pruned = await options.context.beforeRequest(request, {
      signal: options.signal,
      onAttemptUsage: (part) => onResponseUsage({ model: part.model, id: part.requestId ?? "", usage: part.usage, stopReason: part.outcome }),
    });
    if (pruned) {
      const { summaryResponse, ...report } = pruned;
      if (summaryResponse) onResponseUsage(summaryResponse);
      options.emit({ type: "context.pruned", agentId: options.agentId, ...report });
    }
  }
  if (options.beforeModelRequest) {
    const inputTokens = options.context ? options.context.expectedTokens(request) : estimateRequestTokens(request);
    await options.beforeModelRequest({ agentId: options.agentId, inputTokens, maxOutputTokens: request.maxTokens });
  }
  let response: ModelResponse | undefined;
  for await (const part of options.model.stream(request, { signal: options.signal })) {
    if (part.type === "attempt_usage") {
      onResponseUsage({ model: part.model, id: part.requestId ?? "", usage: part.usage, stopReason: part.outcome });
    } else if (part.type === "retry") {
      options.emit({
        type: "model.retry",
        agentId: options.agentId,
        attempt: part.attempt,
        delayMs: part.delayMs,
        reason: part.reason,
        ...(part.status !== undefined ? { status: part.status } : {}),
      });
    } else if (part.type === "response") {
      response = part.response;
    }
  }
  if (!response) throw new Error(`Model ${options.model.id} ended its stream without a response`);
  options.context?.record(request, response.usage);
  return response;
}

async function runToolCall(options: ConversationOptions, tools: Map<string, Tool<any>>, call: ToolUseBlock): Promise<ToolResultBlock> {
  const started = performance.now();
  // The event gets its own copy of the input: a listener that changes it (to redact it for
  // display, say) changes neither what the tool does nor the conversation.
  options.emit({ type: "tool.started", agentId: options.agentId, toolUseId: call.id, name: call.name, input: copyForEvent(call.input) });
  const tool = tools.get(call.name);
  const result = tool
    ? await executeTool(tool, call.input, {
        workspace: options.workspace,
        signal: options.signal,
        agentId: options.agentId,
        toolUseId: call.id,
      })
    : options.offeredTools?.some((offered) => offered.name === call.name)
      ? { content: `${call.name} cannot be used at this point. Tools you can use now: ${[...tools.keys()].join(", ")}`, isError: true }
      : { content: `Unknown tool "${call.name}". Available tools: ${[...tools.keys()].join(", ")}`, isError: true };
  options.emit({
    type: "tool.completed",
    agentId: options.agentId,
    toolUseId: call.id,
    name: call.name,
    isError: result.isError,
    output: result.content.length > EVENT_OUTPUT_LIMIT ? `${result.content.slice(0, EVENT_OUTPUT_LIMIT)}…` : result.content,
    durationMs: Math.round(performance.now() - started),
  });
  return {
    type: "tool_result",
    tool_use_id: call.id,
    content: result.content || "(no output)",
    ...(result.isError ? { is_error: true } : {}),
  };
}

/**
 * Fits one turn's tool results into `budget` estimated tokens (one per four characters): when
 * they are larger together, the largest are cut to a common length, at a line break where one is
 * near, each with a note saying what was left out and how to read on. Smaller results stay whole.
 */
export function capToolResults(results: ToolResultBlock[], calls: readonly ToolUseBlock[], budget: number): ToolResultBlock[] {
  const texts = results.map((result) => (typeof result.content === "string" ? result.content : result.content.map((part) => part.text).join("\n")));
  const sizes = texts.map(estimateTextTokens);
  if (sizes.reduce((a, b) => a + b, 0) <= budget) return results;
  // The common cut: the largest level at which everything fits (smaller results keep all they have).
  const sorted = [...sizes].sort((a, b) => a - b);
  let level = 0;
  let below = 0;
  for (const [i, size] of sorted.entries()) {
    const rest = sorted.length - i;
    if (below + size * rest > budget) {
      level = Math.floor((budget - below) / rest);
      break;
    }
    below += size;
  }
  return results.map((result, i) => {
    if (sizes[i]! <= level) return result;
    const call = calls.find((c) => c.id === result.tool_use_id);
    return { ...result, content: truncated(texts[i]!, Math.max(0, level - NOTE_TOKENS) * 4, call) };
  });
}

/** Room kept for the note after a cut result. */
const NOTE_TOKENS = 80;

function truncated(text: string, chars: number, call: ToolUseBlock | undefined): string {
  let kept = text.slice(0, chars);
  const lineEnd = kept.lastIndexOf("\n");
  if (lineEnd >= chars * 0.8) kept = kept.slice(0, lineEnd + 1);
  // Never end on half of a surrogate pair: a lone surrogate is not valid text for the API.
  else if (/[\uD800-\uDBFF]$/.test(kept)) kept = kept.slice(0, -1);
  const shown = `the first ${kept.length} of ${text.length} characters`;
  return `${kept}${kept.endsWith("\n") || !kept ? "" : "\n"}[Output cut to fit the context window: this shows ${shown}. ${readOnHint(kept, call)}]`;
}

/** How to get the part of a tool's output that was cut. */
function readOnHint(kept: string, call: ToolUseBlock | undefined): string {
  const input = (call?.input ?? {}) as Record<string, unknown>;
  switch (call?.name) {
    case "read_file": {
      // read_file numbers its lines: `  12\tcode`.
      const numbered = [...kept.matchAll(/^\s*(\d+)\t/gm)].at(-1);
      const next = numbered ? Number(numbered[1]) + (kept.endsWith("\n") ? 1 : 0) : Number(input.offset ?? 1);
      return `Read on with read_file { path: ${JSON.stringify(input.path ?? "")}, offset: ${next} } and a limit of lines.`;
    }
    case "run_command":
      return "Narrow the output (grep, head, tail), or redirect it to a file and read that in parts.";
    case "search_files":
    case "list_files":
      return "Narrow the pattern or the path to see the rest.";
    default:
      return "Ask for less at a time to see the rest.";
  }
}

/** The text blocks of a response, joined and trimmed. */
export function textOf(content: ContentBlock[]): string {
  return content
    .filter((block): block is TextBlock => block.type === "text")
    .map((block) => block.text)
    .join("\n")
    .trim();
}

/** A deep copy of `value` for an event; `value` itself when it cannot be copied (a function a host's model put there). */
function copyForEvent<T>(value: T): T {
  try {
    return structuredClone(value);
  } catch {
    return value;
  }
}
