import { randomUUID } from "node:crypto";
import { ConfigError } from "../errors.js";
import type { KeenEvent, KeenEventOf, KeenEventType, RunStatus } from "../events.js";
import { agentTag } from "../lifecycle/agent-tag.js";
import { analyzeProject, formatAnalysis } from "../lifecycle/project-analysis.js";
import { OVERVIEW_HEADING } from "../lifecycle/prompts.js";
import { launchRun } from "../lifecycle/engine.js";
import { runSystemPrompt } from "../lifecycle/prompts.js";
import { firstLine } from "../lifecycle/start-task.js";
import { SNAPSHOT_VERSION, type TaskSnapshot } from "../lifecycle/task-state.js";
import type { Model, Usage } from "../model/model.js";
import type { Tool } from "../tools/define-tool.js";
import type { Workspace } from "../workspace/workspace.js";
import type { ContextSettings } from "./context.js";
import type { EventLog } from "./event-log.js";
import type { EventReader } from "./event-stream.js";

export interface RunOptions {
  /** What the agent should achieve. */
  vision: string;
  /** The repository: the run branch starts from its HEAD (with `branch: false`, the checkout worked in). */
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
  /**
   * Commit the agent's changes on the run branch when it ends. Default true. `false` leaves
   * them uncommitted, which needs `branch: false` (a run branch's worktree is removed at the end).
   */
  commit?: boolean | { author: { name: string; email: string } };
  signal?: AbortSignal;
  runId?: string;
  /** Where the run's events are kept. Default: the last 10 000 in memory. */
  eventLog?: EventLog;
  /** Most events held in memory for fast reading. Default 1000. */
  eventWindow?: number;
  /**
   * The run branch (see `TaskOptions.branch`): by default `keen/<short run id>` from the
   * checkout's HEAD in its own worktree, the checkout only read; a string names it. `false`
   * works in the given checkout, for checkouts keen owns only.
   */
  branch?: string | boolean;
  /** Commit-ish the run branch starts from. Default: the checkout's HEAD. */
  base?: string;
  /** Copy the checkout's uncommitted and untracked files into the run branch as its first commit. */
  includeUncommitted?: boolean;
  /** Most tokens (all kinds) the run may use; checked before each request. */
  tokenBudget?: number;
  /** Most US dollars the run may cost (keen's price table). */
  maxBudgetUsd?: number;
}

export interface RunResult {
  runId: string;
  status: RunStatus;
  summary: string;
  usage: Usage;
  branch: string;
  /** The commit holding the agent's work, or null when nothing changed or committing was off. */
  commit: string | null;
  /** What the run cost in US dollars (keen's price table), when the model's price is known. */
  costUsd?: number;
  error?: { code: string; message: string };
}

/**
 * A running agent: an async iterable of its events (every iterator sees all of them, from the
 * first), typed subscriptions, a `result` promise, and `abort()`.
 */
export interface Run extends AsyncIterable<KeenEvent> {
  readonly runId: string;
  /** The run's events, read-only: a consumer cannot end or break the run through them. */
  readonly events: EventReader;
  readonly result: Promise<RunResult>;
  on<T extends KeenEventType>(type: T, listener: (event: KeenEventOf<T>) => void): () => void;
  abort(reason?: string): void;
}

export const ROOT_AGENT_ID = "root";

/**
 * Starts one agent on a workspace. It works in a tool-use loop until the model stops calling
 * tools, then commits what it changed. This is the run engine with one phase, RUN.
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
  const state: TaskSnapshot = {
    version: SNAPSHOT_VERSION,
    runId: options.runId ?? `run_${randomUUID()}`,
    vision: options.vision,
    nextSeq: 0,
    limits: {
      maxDepth: 0,
      maxChildren: 1,
      maxAgents: 1,
      maxTurnsPerPhase: maxTurns,
      ...(options.tokenBudget !== undefined ? { tokenBudget: options.tokenBudget } : {}),
      ...(options.maxBudgetUsd !== undefined ? { maxBudgetUsd: options.maxBudgetUsd } : {}),
    },
    maxConcurrency: 1,
    onConflict: "rollback",
    tokensSpent: 0,
    agents: [],
  };
  const { commit } = options;
  return launchRun({
    state,
    settings: {
      workspace: options.workspace,
      model: options.model,
      tools: options.tools,
      commit: commit !== false,
      ...(typeof commit === "object" ? { commitAuthor: commit.author } : {}),
      ...(options.maxTokens !== undefined ? { maxTokens: options.maxTokens } : {}),
      ...(options.thinking ? { thinking: options.thinking } : {}),
      ...(options.contextWindow !== undefined ? { contextWindow: options.contextWindow } : {}),
      ...(options.context !== undefined ? { context: options.context } : {}),
      ...(options.eventLog ? { eventLog: options.eventLog } : {}),
      ...(options.eventWindow !== undefined ? { eventWindow: options.eventWindow } : {}),
      ...(options.branch !== undefined ? { branch: options.branch } : {}),
      ...(options.base !== undefined ? { base: options.base } : {}),
      ...(options.includeUncommitted ? { includeUncommitted: true } : {}),
    },
    ...(options.signal ? { signal: options.signal } : {}),
    // The repository overview is part of the system prompt, as in the lifecycle: the cached
    // prefix (tools + system) is the same for every turn and the agent need not list files first.
    system: async (_tree, workspace, files) =>
      `${runSystemPrompt(options.workspace.root, options.instructions)}\n\n${OVERVIEW_HEADING}\n${formatAnalysis(await analyzeProject(workspace, files ? { files } : {}))}`,
    root: { title: firstLine(options.vision), phase: "RUN" },
    firstMessage: async (_tree, agent, _workspace) => `${options.vision}\n\n${agentTag(agent.id, "RUN")}`,
  });
}

export { contextTracker } from "../lifecycle/context-tracker.js";
