import { randomUUID } from "node:crypto";
import { ConfigError } from "../errors.js";
import type { Model } from "../model/model.js";
import type { ContextSettings } from "../run/context.js";
import type { EventLog } from "../run/event-log.js";
import type { Tool } from "../tools/define-tool.js";
import type { RunCommandOptions } from "../tools/index.js";
import type { Workspace } from "../workspace/workspace.js";
import { launchRun, runBranchName, type TaskResult, type TaskRun } from "./engine.js";
import { analyzeProject, formatAnalysis } from "./project-analysis.js";
import { firstMessage, lifecycleSystemPrompt } from "./prompts.js";
import { readSnapshot, SNAPSHOT_VERSION, TaskLimits, type TaskSnapshot } from "./task-state.js";

export type { TaskResult, TaskRun } from "./engine.js";

export interface TaskOptions {
  vision: string;
  /**
   * The repository the run starts from. The run branch is forked from it, so it must be a
   * `ForkableWorkspace` (such as `LocalWorkspace`) unless `branch: false`.
   */
  workspace: Workspace;
  model: Model;
  /** Extra tools offered in the COMPLETE phase, next to the built-ins. */
  tools?: Tool<any>[];
  limits?: Partial<TaskLimits>;
  /** Children of one agent that run at the same time. Default 2. */
  maxConcurrency?: number;
  /** What to do when a merge conflicts or fails validation. Default `resolve`. */
  onConflict?: "resolve" | "rollback";
  /**
   * Run after every merge and when an agent completes; a non-zero exit fails validation. It
   * always runs: a plan's own validation command runs in addition, never instead.
   */
  validation?: { command: string; timeoutMs?: number };
  /** Author and committer of keen's commits. */
  commitAuthor?: { name: string; email: string };
  maxTokens?: number;
  thinking?: { budgetTokens: number };
  runCommand?: RunCommandOptions;
  /** Context window in tokens for pruning decisions. Default: the model's `contextWindow`. */
  contextWindow?: number;
  /** When and how far each agent's conversation is pruned, or `false` to never prune. */
  context?: Omit<ContextSettings, "contextWindow"> | false;
  signal?: AbortSignal;
  runId?: string;
  /** Called with the whole tree's state after every turn and step; persist it to resume later. */
  onSnapshot?: (snapshot: TaskSnapshot) => void | Promise<void>;
  /**
   * Where the host keeps this run's snapshot (a file path, a URL, a key: keen never reads it),
   * echoed as `snapshot` in `run.completed` so whoever reads the events can find it.
   */
  snapshotLocation?: string;
  /**
   * Where the run's events are kept. Default: the last 10 000 in memory. Give a durable log
   * (e.g. `NdjsonEventLog` beside the snapshot) and the same log on resume, and a resumed run
   * numbers its events strictly after the last one emitted, even after a crash.
   */
  eventLog?: EventLog;
  /** Most events held in memory for fast reading. Default 1000. */
  eventWindow?: number;
  /**
   * The run branch. By default (`true`) the root works on a new branch `keen/<short run id>`,
   * created from the checkout's HEAD (or `base`) in its own worktree, and its children on
   * `keen/<id>-agents/summon-A`, …; a string names the run branch instead. The given checkout is
   * only read: its working tree, index, stash and current branch stay as they are, and the
   * result is taken from the branch (`git diff <base>...keen/<id>`, `git merge keen/<id>`).
   *
   * `false` works in the given checkout and commits on its current branch. Only for checkouts
   * keen owns (a throwaway clone), never a user's repository.
   */
  branch?: string | boolean;
  /** Commit-ish the run branch starts from. Default: the checkout's HEAD. */
  base?: string;
  /** Copy the checkout's uncommitted and untracked (non-ignored) files into the run branch as its first commit. */
  includeUncommitted?: boolean;
}

const DEFAULT_LIMITS: TaskLimits = { maxDepth: 2, maxChildren: 4, maxAgents: 10, maxTurnsPerPhase: 30 };

/**
 * Runs the full lifecycle: the root agent explores, plans, hands subtasks to child agents on
 * their own branches and worktrees (recursively), merges their work back with validation and
 * rollback, completes what is left, and commits. The phases and their transitions are in
 * `machine.ts`.
 *
 * @example
 * const run = startTask({
 *   vision: "Add dark mode to the settings page and the dashboard",
 *   workspace: await LocalWorkspace.open("."),
 *   model: anthropic({ model: "claude-sonnet-5-5" }),
 *   limits: { maxDepth: 2, tokenBudget: 2_000_000 },
 *   validation: { command: "npm test" },
 * });
 * run.on("git.merge", (e) => console.log(e.branch, "→", e.into, e.result));
 * const result = await run.result;
 */
export function startTask(options: TaskOptions): TaskRun {
  if (!options.vision?.trim()) throw new ConfigError("startTask(): `vision` must not be empty");
  const limits = TaskLimits.parse({ ...DEFAULT_LIMITS, ...options.limits });
  const state: TaskSnapshot = {
    version: SNAPSHOT_VERSION,
    runId: options.runId ?? `run_${randomUUID()}`,
    vision: options.vision,
    nextSeq: 0,
    limits,
    maxConcurrency: checkConcurrency(options.maxConcurrency),
    onConflict: options.onConflict ?? "resolve",
    ...(options.validation ? { validation: options.validation } : {}),
    tokensSpent: 0,
    agents: [],
  };
  return launchLifecycle(state, options);
}

export interface ResumeOptions extends Omit<TaskOptions, "vision" | "limits" | "maxConcurrency" | "onConflict" | "validation" | "runId" | "branch" | "base" | "includeUncommitted"> {
  /**
   * The run branch name the caller chose (`branch: "name"`) and recorded when it started the run.
   * A snapshot is only a file: resume re-attaches to `keen/<8 hex of its run id>`, or to this
   * name, and to children below `<run branch>-agents/`; a snapshot naming any other branch is
   * refused with a `ConfigError`, so an edited snapshot cannot put the run on a user's branch.
   */
  runBranch?: string;
}

/**
 * Continues a run from a snapshot (of any readable version), in this or another process:
 * finished agents are not run again, an interrupted agent repeats only its unfinished turn, and
 * an interrupted merge is reset to its pre-merge commit and done again.
 *
 * @example
 * const snapshot = readSnapshot(JSON.parse(await readFile("run.json", "utf8")));
 * const run = resumeTask(snapshot, { workspace: await LocalWorkspace.open("."), model });
 */
export function resumeTask(snapshot: TaskSnapshot, options: ResumeOptions): TaskRun {
  const state = readSnapshot(structuredClone(snapshot));
  checkOwnBranches(state, options.runBranch);
  const { runBranch: _vouched, ...rest } = options;
  return launchLifecycle(state, { ...rest, vision: state.vision });
}

function launchLifecycle(state: TaskSnapshot, options: TaskOptions): TaskRun {
  return launchRun({
    state,
    settings: { ...options, ...(state.validation ? { validation: state.validation } : {}), onConflict: state.onConflict },
    ...(options.signal ? { signal: options.signal } : {}),
    // One system prompt for the whole run, repository overview included, taken from the root's
    // checkout: every agent's requests share tools + system as their cached prefix.
    system: async (_tree, workspace, files) => lifecycleSystemPrompt(formatAnalysis(await analyzeProject(workspace, files ? { files } : {}))),
    root: { title: firstLine(state.vision), phase: "EXPLORE" },
    firstMessage: async (_tree, agent, _workspace, instruction) => firstMessage(agent, state.vision, instruction),
  });
}

/** Refuses a snapshot whose branches are not the run's own (see `ResumeOptions.runBranch`). */
function checkOwnBranches(state: TaskSnapshot, vouched: string | undefined): void {
  const runBranch = state.runBranch;
  if (runBranch === undefined) return;
  if (runBranch !== runBranchName(true, state.runId) && runBranch !== vouched) {
    throw new ConfigError(`resumeTask(): the snapshot of ${state.runId} names ${runBranch} as its run branch, not keen/<its run id> nor the branch the run was started with; keen re-attaches only to its own branches`);
  }
  for (const agent of state.agents) {
    const own = agent.parentId === null ? agent.branch === runBranch : agent.branch.startsWith(`${runBranch}-agents/`);
    if (!own) throw new ConfigError(`resumeTask(): agent ${agent.id} of ${state.runId} names branch ${agent.branch}, which is not the run's own (${runBranch} and ${runBranch}-agents/…)`);
  }
}

function checkConcurrency(value: number | undefined): number {
  const n = value ?? 2;
  if (!Number.isInteger(n) || n < 1) throw new ConfigError("startTask(): `maxConcurrency` must be a positive integer");
  return n;
}

export function firstLine(text: string): string {
  const line = text.trim().split("\n")[0] ?? "";
  return line.length > 72 ? `${line.slice(0, 71)}…` : line;
}
