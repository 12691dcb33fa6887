import { randomUUID } from "node:crypto";
import { AbortedError, ConfigError, isKeenError } from "../errors.js";
import type { KeenEvent, KeenEventOf, KeenEventType, RunStatus } from "../events.js";
import { addUsage, emptyUsage, type Model, type Usage } from "../model/model.js";
import type { Tool } from "../tools/define-tool.js";
import type { Workspace } from "../workspace/workspace.js";
import { ContextTracker, type ContextSettings } from "./context.js";
import { runConversation } from "./conversation.js";
import { EventStream } from "./event-stream.js";

export interface RunOptions {
  /** What the agent should achieve. */
  vision: string;
  /** The checkout to work in. */
  workspace: Workspace;
  model: Model;
  /** Tools the model may call. */
  tools: Tool<any>[];
  /** Extra instructions appended to keen's system prompt. */
  instructions?: string;
  /** Most model turns before the run fails. Default 50. */
  maxTurns?: number;
  /** Most output tokens per model response. Default 8192. */
  maxTokens?: number;
  /** Extended thinking budget per response. */
  thinking?: { budgetTokens: number };
  /** Context window in tokens for pruning decisions. Default: the model's `contextWindow`. */
  contextWindow?: number;
  /**
   * When and how far the conversation is pruned as it nears the window (old tool results
   * cleared, then older turns compacted into a summary), or `false` to never prune.
   */
  context?: Omit<ContextSettings, "contextWindow"> | false;
  /** Commit the agent's changes on the current branch when it ends. Default true. */
  commit?: boolean | { author: { name: string; email: string } };
  signal?: AbortSignal;
  runId?: string;
}

export interface RunResult {
  runId: string;
  status: RunStatus;
  summary: string;
  usage: Usage;
  branch: string;
  /** The commit holding the agent's work, or null when nothing changed or committing was off. */
  commit: string | null;
  error?: { code: string; message: string };
}

/**
 * A running agent: an async iterable of its events (every iterator sees all of them, from the
 * first), typed subscriptions, a `result` promise, and `abort()`.
 */
export interface Run extends AsyncIterable<KeenEvent> {
  readonly runId: string;
  readonly events: EventStream;
  readonly result: Promise<RunResult>;
  on<T extends KeenEventType>(type: T, listener: (event: KeenEventOf<T>) => void): () => void;
  abort(reason?: string): void;
}

export const ROOT_AGENT_ID = "root";

/**
 * Starts one agent on a workspace. It works in a tool-use loop until the model stops calling
 * tools, then commits what it changed.
 *
 * @example
 * const run = startRun({
 *   vision: "Add a CONTRIBUTING.md",
 *   workspace: await LocalWorkspace.open("."),
 *   model: anthropic({ model: "claude-sonnet-5-5" }),
 *   tools: builtinTools(),
 * });
 * for await (const event of run) console.log(event.type);
 * const { status, usage } = await run.result;
 */
export function startRun(options: RunOptions): Run {
  if (!options.vision?.trim()) throw new ConfigError("startRun(): `vision` must not be empty");
  const maxTurns = options.maxTurns ?? 50;
  if (!Number.isInteger(maxTurns) || maxTurns < 1) throw new ConfigError("startRun(): `maxTurns` must be a positive integer");
  const context = contextTracker(options);
  const runId = options.runId ?? `run_${randomUUID()}`;
  const events = new EventStream(runId);
  const controller = new AbortController();
  const onOuterAbort = () => controller.abort(options.signal?.reason);
  if (options.signal?.aborted) controller.abort(options.signal.reason);
  else options.signal?.addEventListener("abort", onOuterAbort, { once: true });

  const result = execute(options, events, controller.signal, maxTurns, context).finally(() => {
    options.signal?.removeEventListener("abort", onOuterAbort);
    events.close();
  });
  // The result is also reported through events; an unobserved rejection must not crash the host.
  result.catch(() => {});

  return {
    runId,
    events,
    result,
    on: (type, listener) => events.on(type, listener),
    abort: (reason = "aborted by caller") => controller.abort(new AbortedError(reason)),
    [Symbol.asyncIterator]: () => events.iterate(),
  };
}

/**
 * The tracker for one agent's context, or undefined when pruning is off. Throws `ConfigError` on
 * bad settings, including a `maxTokens` that leaves no room in the window.
 */
export function contextTracker(options: Pick<RunOptions, "model" | "contextWindow" | "context" | "maxTokens">): ContextTracker | undefined {
  const { model, contextWindow, context: settings, maxTokens = 8192 } = options;
  if (settings === false) return undefined;
  const tracker = new ContextTracker(model, { ...settings, ...(contextWindow !== undefined ? { contextWindow } : {}) });
  tracker.checkMaxTokens(maxTokens);
  return tracker;
}

async function execute(options: RunOptions, events: EventStream, signal: AbortSignal, maxTurns: number, context: ContextTracker | undefined): Promise<RunResult> {
  const started = performance.now();
  const { workspace, model } = options;
  const agentId = ROOT_AGENT_ID;
  const emit = (event: Parameters<EventStream["emit"]>[0]) => events.emit(event);
  let usage = emptyUsage();
  let status: RunStatus = "success";
  let summary = "";
  let error: RunResult["error"];
  let branch = "HEAD";
  let commit: string | null = null;

  try {
    branch = await workspace.currentBranch();
    emit({ type: "run.started", agentId, vision: options.vision, model: model.id, repo: workspace.root, branch });
    emit({ type: "agent.spawned", agentId, parentId: null, branch, depth: 0, title: firstLine(options.vision) });
    emit({ type: "agent.phase", agentId, phase: "RUN", previous: null });
    const conversation = await runConversation({
      agentId,
      model,
      system: systemPrompt(workspace.root, options.instructions),
      messages: [{ role: "user", content: options.vision }],
      tools: options.tools,
      workspace,
      emit,
      signal,
      maxTurns,
      maxTokens: options.maxTokens ?? 8192,
      ...(options.thinking ? { thinking: options.thinking } : {}),
      ...(context ? { context } : {}),
    });
    summary = conversation.finalText;
    if (conversation.outcome === "max_turns") {
      status = "failed";
      emit({ type: "limit.reached", agentId, limit: "maxTurns", value: maxTurns, detail: `The agent used all ${maxTurns} turns` });
      error = { code: "max_turns", message: `The agent did not finish within ${maxTurns} turns` };
    }
  } catch (caught) {
    if (signal.aborted || isKeenError(caught, "aborted")) {
      status = "aborted";
      const reason = signal.reason instanceof Error ? signal.reason.message : "aborted";
      error = { code: "aborted", message: reason };
    } else {
      status = "error";
      error = {
        code: isKeenError(caught) ? caught.code : "internal_error",
        message: caught instanceof Error ? caught.message : String(caught),
      };
    }
  }
  usage = sumUsage(events.history);

  if (options.commit !== false && status !== "error") {
    try {
      const author = typeof options.commit === "object" ? options.commit.author : undefined;
      commit = (await workspace.commit(commitMessage(options.vision, status, summary), author ? { author } : {})).sha;
      if (commit) emit({ type: "git.commit", agentId, branch, sha: commit, message: firstLine(options.vision) });
    } catch (caught) {
      status = "error";
      error = { code: "commit_failed", message: caught instanceof Error ? caught.message : String(caught) };
    }
  }

  if (!summary) summary = error?.message ?? "";
  emit({ type: "agent.completed", agentId, status, summary, usage });
  emit({
    type: "run.completed",
    agentId,
    status,
    summary,
    usage,
    ...(error ? { error } : {}),
    durationMs: Math.round(performance.now() - started),
  });
  return { runId: events.runId, status, summary, usage, branch, commit, ...(error ? { error } : {}) };
}

/** Usage from `model.usage` events, which also covers turns finished before an abort or error. */
function sumUsage(history: readonly KeenEvent[]): Usage {
  let total = emptyUsage();
  for (const event of history) if (event.type === "model.usage") total = addUsage(total, event.usage);
  return total;
}

function firstLine(text: string): string {
  const line = text.trim().split("\n")[0] ?? "";
  return line.length > 72 ? `${line.slice(0, 71)}…` : line;
}

function commitMessage(vision: string, status: RunStatus, summary: string): string {
  const body = [summary.trim(), status === "success" ? "" : `Status: ${status}`].filter(Boolean).join("\n\n");
  return `${firstLine(vision)}\n\n${body}\n\nCo-authored-by: keen <keen@localhost>`.replace(/\n{3,}/g, "\n\n").trim();
}

function systemPrompt(root: string, instructions?: string): string {
  return [
    "You are keen, an autonomous software engineer working in a git repository.",
    `The repository is checked out at ${root}; every path you pass to a tool is relative to it.`,
    "Work in small verified steps: look before you change, make focused edits, and run the project's own checks when they exist.",
    "Use the tools to read, search, edit files and run commands. When the task is done, reply with a short summary of what you changed and how you checked it, without calling a tool.",
    instructions?.trim() ? `\nAdditional instructions:\n${instructions.trim()}` : "",
  ].join("\n");
}
