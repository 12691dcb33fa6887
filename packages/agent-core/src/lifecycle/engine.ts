import { AbortedError, ConfigError, isKeenError } from "../errors.js";
import type { Phase, RunStatus } from "../events.js";
import { emptyUsage } from "../model/model.js";
import { EventStream } from "../run/event-stream.js";
import type { Run, RunResult } from "../run/start-run.js";
import { createHash } from "node:crypto";
import { isForkable, type ForkableWorkspace, type Workspace } from "../workspace/workspace.js";
import { costUsd } from "./pricing.js";
import { contextTracker } from "./context-tracker.js";
import { driveAgent } from "./machine.js";
import type { AgentState, TaskSnapshot } from "./task-state.js";
import { AgentTree, type EngineSettings } from "./tree.js";
import { forkOptions } from "./phases/summon.js";
import { dropRunCheckpoints } from "./turn-checkpoints.js";

export interface TaskResult extends RunResult {
  /** Final state of every agent in the tree. */
  agents: AgentState[];
}

export interface TaskRun extends Omit<Run, "result"> {
  readonly result: Promise<TaskResult>;
}

/** What distinguishes one kind of run (the lifecycle tree, the single loop) for the engine. */
export interface EngineConfig {
  /** The run's state: new (no agents) or read from a snapshot. */
  state: TaskSnapshot;
  settings: EngineSettings;
  signal?: AbortSignal;
  /**
   * The system prompt of every agent, or how to build it from the root's workspace once the run
   * has one (before any request, also on resume): one text for the whole run. `files`, when
   * given, are the workspace's files (sorted, all of them), listed from the start commit while
   * the worktree was made; without them the workspace lists its own.
   */
  system: string | ((tree: AgentTree, workspace: Workspace, files?: readonly string[]) => Promise<string>);
  /** The root agent of a new run: its title and the phase it starts in. */
  root: { title: string; phase: Phase };
  /** The first user message of an agent, ending with its first phase's `instruction`. */
  firstMessage(tree: AgentTree, agent: AgentState, workspace: Workspace, instruction: string): Promise<string>;
}

/**
 * The one run engine: wires the caller's abort signal, emits `run.started`, drives the root
 * agent through the state machine (children are driven from SUMMON), maps the outcome to the
 * run's status and error, and emits `run.completed`. `startTask`, `resumeTask` and `startRun`
 * are configurations of it.
 */
export function launchRun(config: EngineConfig): TaskRun {
  const { state, settings } = config;
  // Invalid snapshot, context and branch settings fail here, before anything runs.
  const location = settings.snapshotLocation;
  if (location !== undefined && (typeof location !== "string" || location.trim() === "")) {
    throw new ConfigError("`snapshotLocation` must be a non-empty string (where the host keeps the run's snapshot)");
  }
  contextTracker(settings);
  checkBranchSettings(settings);
  const events = new EventStream(state.runId, {
    startSeq: state.nextSeq,
    ...(settings.eventLog ? { log: settings.eventLog } : {}),
    ...(settings.eventWindow !== undefined ? { window: settings.eventWindow } : {}),
  });
  const controller = new AbortController();
  const onOuterAbort = () => controller.abort(config.signal?.reason ?? new AbortedError("aborted by caller"));
  if (config.signal?.aborted) onOuterAbort();
  else config.signal?.addEventListener("abort", onOuterAbort, { once: true });

  const tree = new AgentTree(state, settings, events, controller, typeof config.system === "string" ? config.system : "");
  tree.drive = (agent, workspace) => driveAgent(tree, agent, workspace, (a, w, instruction) => config.firstMessage(tree, a, w, instruction));
  const result = execute(tree, config).finally(() => {
    config.signal?.removeEventListener("abort", onOuterAbort);
    events.close();
  });
  // The result is also reported through events; an unobserved rejection must not crash the host.
  result.catch(() => {});
  return {
    runId: state.runId,
    events: events.reader(),
    result,
    on: (type, listener) => events.on(type, listener),
    abort: (reason = "aborted by caller") => controller.abort(new AbortedError(reason)),
    [Symbol.asyncIterator]: () => events.iterate(),
  };
}

async function execute(tree: AgentTree, config: EngineConfig): Promise<TaskResult> {
  const started = performance.now();
  const { state, settings } = tree;
  const fresh = state.agents.length === 0;
  let workspace = settings.workspace;
  let runWorktree: ForkableWorkspace | undefined;
  let startFiles: Promise<string[] | undefined> | undefined;
  let root: AgentState | undefined;
  let failure: RunResult["error"];
  try {
    // A resumed run's log may hold events numbered after its snapshot: never number one twice.
    await tree.events.continueAfterLog();
    if (fresh) {
      // The default: a run branch in its own worktree; the given checkout is only read.
      const onRunBranch = settings.branch !== false;
      const branch = onRunBranch ? runBranchName(typeof settings.branch === "string" ? settings.branch : true, state.runId) : await workspace.currentBranch();
      tree.emit({ type: "run.started", agentId: "root", vision: state.vision, model: settings.model.id, repo: workspace.root, branch });
      root = tree.createAgent({ id: "root", parentId: null, depth: 0, branch, title: config.root.title, instructions: state.vision, phase: config.root.phase });
      tree.emitSpawn(root);
      if (onRunBranch) {
        ({ worktree: runWorktree, files: startFiles } = await openFreshRunBranch(tree, root));
        workspace = runWorktree;
      }
    } else {
      root = tree.agents.get("root");
      if (!root) throw new ConfigError("resumeTask(): the snapshot has no root agent");
      if (state.runBranch) {
        runWorktree = await reattachRunBranch(tree, root);
        workspace = runWorktree;
      }
      await reopenWorkspaces(tree, workspace);
    }
    tree.workspaces.set("root", workspace);
    if (typeof config.system === "function") tree.system = await config.system(tree, workspace, await startFiles);
    await tree.drive(root, workspace);
  } catch (caught) {
    failure = { code: isKeenError(caught) ? caught.code : "internal_error", message: caught instanceof Error ? caught.message : String(caught) };
  }
  let head: string | undefined;
  try {
    head = await workspace.head();
  } catch {
    head = undefined;
  }
  // The result lives on the run branch; its worktree is not needed any more. Removed while the
  // checkpoints are dropped: one touches the worktree registry, the other refs.
  // Worktrees kept for reuse (`reuseWorktrees`) are not left behind by a finished run; released
  // after the run worktree's dispose, which may have kept it.
  const disposed = (async () => {
    await runWorktree?.dispose().catch(() => {});
    if (isForkable(settings.workspace)) await settings.workspace.releaseWorktrees?.().catch(() => {});
  })();
  let { status, summary, error } = outcome(tree, root, failure);
  // An interrupted run is resumed from its checkpoints; any other end needs them no more.
  if (status !== "interrupted") await dropRunCheckpoints(tree, settings.workspace).finally(() => disposed);
  await disposed;
  const usage = root ? tree.treeUsage(root) : emptyUsage();
  const cost = costUsd(settings.model.id, usage);
  await tree.snapshot();
  tree.emit({
    type: "run.completed",
    agentId: "root",
    status,
    summary,
    usage,
    ...(cost !== undefined ? { costUsd: cost } : {}),
    ...(root ? { branch: root.branch } : {}),
    ...(head ? { head } : {}),
    ...(settings.snapshotLocation !== undefined ? { snapshot: settings.snapshotLocation } : {}),
    ...(error ? { error } : {}),
    durationMs: Math.round(performance.now() - started),
  });
  try {
    await tree.events.flush();
  } catch (caught) {
    // The run's record is incomplete: say so rather than report a clean end.
    status = "error";
    error = { code: "event_log_failed", message: `Events could not be stored: ${caught instanceof Error ? caught.message : String(caught)}` };
  }
  return {
    runId: state.runId,
    status,
    summary,
    usage,
    ...(cost !== undefined ? { costUsd: cost } : {}),
    branch: root?.branch ?? "HEAD",
    commit: root?.commit ?? null,
    ...(error ? { error } : {}),
    agents: [...tree.agents.values()],
  };
}

/** The run's status, summary and error, from the root agent's end (the one place they are decided). */
function outcome(tree: AgentTree, root: AgentState | undefined, failure: RunResult["error"]): { status: RunStatus; summary: string; error?: RunResult["error"] } {
  if (tree.budget.isSpent) {
    const error =
      tree.budget.stoppedBy === "costBudget"
        ? { code: "cost_budget", message: `The budget of $${tree.state.limits.maxBudgetUsd} was spent` }
        : { code: "token_budget", message: `The token budget of ${tree.state.limits.tokenBudget} tokens was spent` };
    return { status: "failed", summary: root?.summary || error.message, error };
  }
  if (tree.interruption) {
    return { status: "interrupted", summary: `Interrupted, resumable: ${tree.interruption.message}`, error: tree.interruption };
  }
  if (failure || !root) {
    const error = failure ?? { code: "internal_error", message: "The run has no root agent" };
    return { status: "error", summary: error.message, error };
  }
  const status = root.status ?? "error";
  const summary = root.summary ?? "";
  if (status === "success") return { status, summary };
  if (status === "aborted") {
    const reason = tree.signal.reason;
    const error = { code: "aborted", message: reason instanceof Error ? reason.message : typeof reason === "string" ? reason : "aborted" };
    return { status, summary: summary || error.message, error };
  }
  const error = root.error ?? { code: status === "failed" ? "agent_failed" : "agent_error", message: summary || `The root agent ended with status ${status}` };
  return { status, summary: summary || error.message, error };
}

/**
 * A resumed run may find a parent mid-merge: put it back at its pre-merge commit. Agents that
 * were running get their worktrees back.
 */
async function reopenWorkspaces(tree: AgentTree, root: Workspace): Promise<void> {
  if (!isForkable(root)) return;
  const reopen = async (agent: AgentState) => {
    let workspace = tree.workspaces.get(agent.id);
    if (!workspace) {
      // With the paths it was forked with: a worktree a recovery pass removed comes back as sparse.
      const parent = agent.parentId === null ? undefined : tree.agents.get(agent.parentId);
      workspace = await root.fork(agent.branch, { reattach: true, ...(parent ? forkOptions(parent, agent) : {}) });
      tree.workspaces.set(agent.id, workspace);
    }
    return workspace as ForkableWorkspace;
  };
  for (const agent of tree.agents.values()) {
    for (const merge of Object.values(agent.merges)) {
      if (merge.status !== "in_progress" || !merge.preMergeSha) continue;
      const workspace = agent.id === "root" ? root : await reopen(agent);
      await workspace.resetTo(merge.preMergeSha);
      merge.status = "pending";
    }
  }
  // Only branches this run's snapshot names are re-attached.
  for (const agent of tree.agents.values()) {
    if (agent.id !== "root" && agent.phase !== "DONE") await reopen(agent);
  }
}

function checkBranchSettings(settings: EngineSettings): void {
  const { branch } = settings;
  if (branch !== undefined && typeof branch !== "boolean" && (typeof branch !== "string" || branch.trim() === "")) {
    throw new ConfigError("`branch` must be true, false or a non-empty branch name");
  }
  if (branch === false && (settings.base !== undefined || settings.includeUncommitted)) {
    throw new ConfigError("`base` and `includeUncommitted` choose how a run branch starts; they cannot be combined with `branch: false`");
  }
  if (settings.base !== undefined && settings.includeUncommitted) {
    throw new ConfigError("`includeUncommitted` carries the checkout's work on top of its HEAD; it cannot start from another `base`");
  }
  if (branch !== false && settings.commit === false) {
    // The run branch's worktree is removed when the run ends: uncommitted work would go with it.
    throw new ConfigError("`commit: false` leaves the work uncommitted, which only `branch: false` keeps (in the given checkout)");
  }
}

/** `keen/<8 hex chars of the run id>`, or the name the caller chose. */
export function runBranchName(branch: string | true, runId: string): string {
  if (branch !== true) return branch;
  const hex = runId.replace(/^run_/, "").replace(/-/g, "").toLowerCase();
  const short = /^[0-9a-f]{8}/.test(hex) ? hex.slice(0, 8) : createHash("sha256").update(runId).digest("hex").slice(0, 8);
  return `keen/${short}`;
}

/** The user's checkout, as a workspace that can make the run's worktree. */
function forkableCheckout(tree: AgentTree): ForkableWorkspace {
  const checkout = tree.settings.workspace;
  if (!isForkable(checkout)) {
    throw new ConfigError("A run branch needs a workspace that can fork (such as LocalWorkspace); `branch: false` works in the given workspace instead, for one keen owns");
  }
  return checkout;
}

/** Resume: the root's worktree on its run branch, re-attached. */
async function reattachRunBranch(tree: AgentTree, root: AgentState): Promise<ForkableWorkspace> {
  return forkableCheckout(tree).fork(root.branch, { reattach: true });
}

/**
 * A new run: the root's worktree on a new run branch from the checkout's HEAD (or `base`); the
 * user's checkout is only read. Where the checkout can list a commit's files, the start commit's
 * files are listed meanwhile (for the repository overview), so the first request does not wait
 * for a listing of the new worktree. With carried-over work the worktree holds more than the
 * start commit, and lists its own.
 */
async function openFreshRunBranch(tree: AgentTree, root: AgentState): Promise<{ worktree: ForkableWorkspace; files?: Promise<string[] | undefined> }> {
  const checkout = forkableCheckout(tree);
  const { state, settings } = tree;
  const from = settings.base ?? (await checkout.head());
  // A listing that fails leaves the overview to the worktree's own listing.
  const files = !settings.includeUncommitted && checkout.listCommitFiles ? checkout.listCommitFiles(from).catch(() => undefined) : undefined;
  // Carried-over work sits on the checkout's HEAD, so the workspace refuses it with another base.
  const worktree = await checkout.fork(root.branch, {
    ...(settings.base ? { from: settings.base } : {}),
    ...(settings.includeUncommitted ? { includeUncommitted: true } : {}),
  });
  // The commit the run starts from, as a sha where it can be read: with carried-over work the
  // worktree's head is the commit holding that work, one above the base.
  const checkedOut = await worktree.head();
  state.base = settings.includeUncommitted ? from : checkedOut;
  tree.pristine.set(root.id, checkedOut);
  state.runBranch = root.branch;
  tree.emit({ type: "git.branch", agentId: root.id, branch: root.branch, from: state.base, worktree: worktree.root });
  const report = worktree.lastForkReport;
  if (settings.includeUncommitted && report && report.skipped.length > 0) {
    tree.emit({ type: "git.skipped", agentId: root.id, branch: root.branch, files: report.skipped.map((file) => ({ ...file })) });
  }
  await tree.snapshot();
  // Only a listing of the very commit checked out stands for the worktree (HEAD may have moved
  // since it was read; a named base is resolved by the fork).
  return { worktree, ...(files && from === checkedOut ? { files } : {}) };
}
