import { randomUUID } from "node:crypto";
import { AbortedError, ConfigError, KeenError, isKeenError } from "../errors.js";
import type { KeenEventInput, RunStatus } from "../events.js";
import { addUsage, emptyUsage, totalInputTokens, type Message, type Model, type Usage } from "../model/model.js";
import { runConversation, type ConversationResult } from "../run/conversation.js";
import type { ContextSettings, ContextTracker } from "../run/context.js";
import { EventStream } from "../run/event-stream.js";
import { contextTracker, type Run, type RunResult } from "../run/start-run.js";
import { builtinTools, readOnlyTools, type RunCommandOptions } from "../tools/index.js";
import type { Tool } from "../tools/define-tool.js";
import { isForkable, type ForkableWorkspace, type Workspace } from "../workspace/workspace.js";
import { childBranch, subtaskLabel } from "./branch-names.js";
import {
  completeMergeTool,
  completeTaskTool,
  finishExploreTool,
  submitPlanTool,
  type CompleteTaskInput,
  type FinishExploreInput,
  type SubmitPlanInput,
} from "./phase-tools.js";
import { analyzeProject, formatAnalysis } from "./project-analysis.js";
import { firstMessage, LIFECYCLE_SYSTEM_PROMPT, phaseMessage, reminderMessage } from "./prompts.js";
import { TaskLimits, TaskSnapshot, type AgentState } from "./task-state.js";

export interface TaskOptions {
  vision: string;
  /** The root checkout. Subtasks need a `ForkableWorkspace` (such as `LocalWorkspace`). */
  workspace: Workspace;
  model: Model;
  /** Extra tools offered in the COMPLETE phase, next to the built-ins. */
  tools?: Tool<any>[];
  limits?: Partial<TaskLimits>;
  /** Children of one agent that run at the same time. Default 2. */
  maxConcurrency?: number;
  /** What to do when a merge conflicts or fails validation. Default `resolve`. */
  onConflict?: "resolve" | "rollback";
  /** Run after every merge and when an agent completes; a non-zero exit fails validation. */
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
  /**
   * Show the model every lifecycle tool in every phase, in one fixed order, and refuse calls the
   * phase does not allow. The tool list is the start of the prompt-cache prefix, so a fixed list
   * lets the cached conversation survive phase changes. Default false: each phase shows only
   * its own tools.
   */
  stableTools?: boolean;
  signal?: AbortSignal;
  runId?: string;
  /** Called with the whole tree's state after every turn and step; persist it to resume later. */
  onSnapshot?: (snapshot: TaskSnapshot) => void | Promise<void>;
}

export interface TaskResult extends RunResult {
  /** Final state of every agent in the tree. */
  agents: AgentState[];
}

export interface TaskRun extends Omit<Run, "result"> {
  readonly result: Promise<TaskResult>;
}

const DEFAULT_LIMITS: TaskLimits = { maxDepth: 2, maxChildren: 4, maxAgents: 10, maxTurnsPerPhase: 30 };
const VALIDATION_OUTPUT_LIMIT = 4_000;

/**
 * Runs the full lifecycle: the root agent explores, plans, hands subtasks to child agents on
 * their own branches and worktrees (recursively), merges their work back with validation and
 * rollback, completes what is left, and commits.
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
  const runId = options.runId ?? `run_${randomUUID()}`;
  const snapshot: TaskSnapshot = {
    version: 1,
    runId,
    vision: options.vision,
    nextSeq: 0,
    limits,
    maxConcurrency: checkConcurrency(options.maxConcurrency),
    onConflict: options.onConflict ?? "resolve",
    ...(options.validation ? { validation: options.validation } : {}),
    tokensSpent: 0,
    agents: [],
  };
  return launch(snapshot, options, true);
}

export interface ResumeOptions extends Omit<TaskOptions, "vision" | "limits" | "maxConcurrency" | "onConflict" | "validation" | "runId"> {}

/**
 * Continues a run from a snapshot, in this or another process: finished agents are not run
 * again, an interrupted agent repeats only its unfinished turn, and an interrupted merge is
 * reset to its pre-merge commit and done again.
 *
 * @example
 * const snapshot = TaskSnapshot.parse(JSON.parse(await readFile("run.json", "utf8")));
 * const run = resumeTask(snapshot, { workspace: await LocalWorkspace.open("."), model });
 */
export function resumeTask(snapshot: TaskSnapshot, options: ResumeOptions): TaskRun {
  const parsed = TaskSnapshot.parse(snapshot);
  return launch(structuredClone(parsed), { ...options, vision: parsed.vision }, false);
}

function checkConcurrency(value: number | undefined): number {
  const n = value ?? 2;
  if (!Number.isInteger(n) || n < 1) throw new ConfigError("startTask(): `maxConcurrency` must be a positive integer");
  return n;
}

function launch(snapshot: TaskSnapshot, options: TaskOptions, fresh: boolean): TaskRun {
  // Invalid context settings fail here, before anything runs.
  contextTracker(options);
  const events = new EventStream(snapshot.runId, { startSeq: snapshot.nextSeq });
  const controller = new AbortController();
  const onOuterAbort = () => controller.abort(options.signal?.reason ?? new AbortedError("aborted by caller"));
  if (options.signal?.aborted) onOuterAbort();
  else options.signal?.addEventListener("abort", onOuterAbort, { once: true });

  const orchestrator = new Orchestrator(snapshot, options, events, controller);
  const result = orchestrator.run(fresh).finally(() => {
    options.signal?.removeEventListener("abort", onOuterAbort);
    events.close();
  });
  result.catch(() => {});
  return {
    runId: snapshot.runId,
    events,
    result,
    on: (type, listener) => events.on(type, listener),
    abort: (reason = "aborted by caller") => controller.abort(new AbortedError(reason)),
    [Symbol.asyncIterator]: () => events.iterate(),
  };
}

/** Raised inside an agent when the run's token budget is spent. */
class BudgetSpent extends KeenError {
  constructor(budget: number) {
    super("token_budget", `The run's token budget of ${budget} tokens is spent`);
  }
}

class Orchestrator {
  private resumed = false;
  private readonly agents = new Map<string, AgentState>();
  private readonly workspaces = new Map<string, Workspace>();
  /** Context size per agent, followed across its phases. */
  private readonly contexts = new Map<string, ContextTracker | undefined>();
  private analysis: string | undefined;
  private budgetSpent = false;
  private snapshotQueue: Promise<void> = Promise.resolve();

  constructor(
    private readonly state: TaskSnapshot,
    private readonly options: TaskOptions,
    private readonly events: EventStream,
    private readonly controller: AbortController,
  ) {
    for (const agent of state.agents) this.agents.set(agent.id, agent);
  }

  private get signal(): AbortSignal {
    return this.controller.signal;
  }

  private emit(event: KeenEventInput): void {
    this.events.emit(event);
    if (event.type === "model.usage") this.countTokens(event.usage);
  }

  private countTokens(usage: Usage): void {
    this.state.tokensSpent += totalInputTokens(usage) + usage.outputTokens;
    const budget = this.state.limits.tokenBudget;
    if (budget !== undefined && !this.budgetSpent && this.state.tokensSpent >= budget) {
      this.budgetSpent = true;
      this.events.emit({
        type: "limit.reached",
        agentId: "root",
        limit: "tokenBudget",
        value: budget,
        detail: `${this.state.tokensSpent} tokens used of a budget of ${budget}; stopping every agent`,
      });
      this.controller.abort(new BudgetSpent(budget));
    }
  }

  /** Persists the tree's state; calls are queued so snapshots arrive in order. */
  private snapshot(): Promise<void> {
    const onSnapshot = this.options.onSnapshot;
    if (!onSnapshot) return Promise.resolve();
    this.state.nextSeq = this.events.seq;
    this.state.agents = [...this.agents.values()];
    const copy = JSON.parse(JSON.stringify(this.state)) as TaskSnapshot;
    this.snapshotQueue = this.snapshotQueue.then(() => onSnapshot(copy)).catch(() => {});
    return this.snapshotQueue;
  }

  async run(fresh: boolean): Promise<TaskResult> {
    const started = performance.now();
    const rootWorkspace = this.options.workspace;
    let status: RunStatus = "success";
    let summary = "";
    let error: RunResult["error"];
    let root: AgentState | undefined;
    try {
      const branch = await rootWorkspace.currentBranch();
      if (fresh) {
        this.emit({ type: "run.started", agentId: "root", vision: this.state.vision, model: this.options.model.id, repo: rootWorkspace.root, branch });
        root = this.createAgent({ id: "root", parentId: null, depth: 0, branch, title: firstLine(this.state.vision), instructions: this.state.vision });
        this.emitSpawn(root);
      } else {
        root = this.agents.get("root");
        if (!root) throw new ConfigError("resumeTask(): the snapshot has no root agent");
        this.resumed = true;
        await this.cleanUpInterruptedMerges(rootWorkspace);
      }
      this.workspaces.set("root", rootWorkspace);
      await this.runAgent(root, rootWorkspace);
      status = root.status ?? "error";
      summary = root.summary ?? "";
    } catch (caught) {
      status = "error";
      error = { code: isKeenError(caught) ? caught.code : "internal_error", message: caught instanceof Error ? caught.message : String(caught) };
    }
    if (this.budgetSpent) {
      status = "failed";
      error = { code: "token_budget", message: `The token budget of ${this.state.limits.tokenBudget} tokens was spent` };
    } else if (status === "aborted") {
      const reason = this.signal.reason;
      error = { code: "aborted", message: reason instanceof Error ? reason.message : "aborted" };
    } else if ((status === "failed" || status === "error") && !error) {
      error = { code: status === "failed" ? "agent_failed" : "agent_error", message: summary || `The root agent ended with status ${status}` };
    }
    const usage = [...this.agents.values()].reduce((sum, agent) => addUsage(sum, agent.usage), emptyUsage());
    await this.snapshot();
    this.emit({
      type: "run.completed",
      agentId: "root",
      status,
      summary: summary || error?.message || "",
      usage,
      ...(error ? { error } : {}),
      durationMs: Math.round(performance.now() - started),
    });
    return {
      runId: this.state.runId,
      status,
      summary: summary || error?.message || "",
      usage,
      branch: root?.branch ?? "HEAD",
      commit: root?.commit ?? null,
      ...(error ? { error } : {}),
      agents: [...this.agents.values()],
    };
  }

  private createAgent(init: Pick<AgentState, "id" | "parentId" | "depth" | "branch" | "title" | "instructions">): AgentState {
    const agent: AgentState = { ...init, phase: "EXPLORE", messages: [], children: [], merges: {}, usage: emptyUsage() };
    this.agents.set(agent.id, agent);
    return agent;
  }

  private emitSpawn(agent: AgentState): void {
    this.emit({ type: "agent.spawned", agentId: agent.id, parentId: agent.parentId, branch: agent.branch, depth: agent.depth, title: agent.title });
    this.emit({ type: "agent.phase", agentId: agent.id, phase: "EXPLORE", previous: null });
  }

  private setPhase(agent: AgentState, phase: AgentState["phase"]): void {
    const previous = agent.phase;
    agent.phase = phase;
    if (phase !== "DONE" && previous !== "DONE") this.emit({ type: "agent.phase", agentId: agent.id, phase, previous });
  }

  /** Drives one agent through its phases until it is done, whatever happens to it. */
  private async runAgent(agent: AgentState, workspace: Workspace): Promise<void> {
    try {
      if (agent.messages.length === 0 && agent.phase === "EXPLORE") {
        agent.messages.push({ role: "user", content: firstMessage(agent, this.state.vision, await this.projectOverview(workspace)) });
        await this.snapshot();
      }
      while (agent.phase !== "DONE") {
        if (this.signal.aborted) throw this.signal.reason ?? new AbortedError();
        switch (agent.phase) {
          case "EXPLORE":
            await this.explore(agent, workspace);
            break;
          case "PLAN":
            await this.plan(agent);
            break;
          case "SUMMON":
            await this.summon(agent, workspace);
            break;
          case "COMPLETE":
            await this.complete(agent, workspace);
            break;
          default:
            throw new KeenError("invalid_phase", `Agent ${agent.id} is in unknown phase ${agent.phase}`);
        }
        await this.snapshot();
      }
    } catch (caught) {
      if (this.signal.aborted || isKeenError(caught, "aborted") || caught instanceof BudgetSpent) {
        agent.status = "aborted";
        agent.summary = agent.summary ?? `Stopped: ${reasonText(this.signal.reason)}`;
      } else {
        agent.status = isKeenError(caught, "phase_failed") ? "failed" : "error";
        agent.summary = caught instanceof Error ? caught.message : String(caught);
      }
      agent.phase = "DONE";
    }
    // Whatever happened, the agent's work so far is kept on its branch.
    await this.commitWork(agent, workspace);
    const usage = this.treeUsage(agent);
    this.emit({ type: "agent.completed", agentId: agent.id, status: agent.status ?? "error", summary: agent.summary ?? "", usage });
    await this.snapshot();
  }

  private async projectOverview(workspace: Workspace): Promise<string> {
    if (workspace === this.options.workspace && this.analysis) return this.analysis;
    const text = formatAnalysis(await analyzeProject(workspace));
    if (workspace === this.options.workspace) this.analysis = text;
    return text;
  }

  /** Runs one phase's conversation until its closing tool is called; one reminder, then failure. */
  private async converse(agent: AgentState, workspace: Workspace, tools: Tool<any>[], closingTool: string): Promise<ConversationResult & { closingCall: { name: string; input: unknown } }> {
    let reminded = false;
    let turnsLeft = this.state.limits.maxTurnsPerPhase;
    while (true) {
      const result = await runConversation({
        agentId: agent.id,
        model: this.options.model,
        system: LIFECYCLE_SYSTEM_PROMPT,
        messages: agent.messages,
        tools,
        ...(this.options.stableTools ? { offeredTools: this.allLifecycleTools() } : {}),
        workspace,
        emit: (event) => this.emit(event),
        signal: this.signal,
        maxTurns: turnsLeft,
        maxTokens: this.options.maxTokens ?? 8192,
        ...(this.options.thinking ? { thinking: this.options.thinking } : {}),
        closingTools: new Set([closingTool]),
        ...this.contextOption(agent),
        usageBefore: agent.usage,
        onTurn: async () => {
          await this.snapshot();
        },
        onUsage: (usage) => {
          agent.usage = addUsage(agent.usage, usage);
        },
      });
      turnsLeft -= result.turns;
      if (result.outcome === "closed" && result.closingCall) return result as ConversationResult & { closingCall: { name: string; input: unknown } };
      if (result.outcome === "max_turns" || turnsLeft <= 0) {
        this.emit({ type: "limit.reached", agentId: agent.id, limit: "maxTurns", value: this.state.limits.maxTurnsPerPhase, detail: `Agent ${agent.id} used all its turns in ${agent.phase}` });
        throw new KeenError("phase_failed", `Agent ${agent.id} did not finish ${agent.phase} within ${this.state.limits.maxTurnsPerPhase} turns`);
      }
      if (reminded) throw new KeenError("phase_failed", `Agent ${agent.id} ended ${agent.phase} without calling ${closingTool}`);
      reminded = true;
      appendUserText(agent.messages, reminderMessage(closingTool));
    }
  }

  private lifecycleTools: Tool<any>[] | undefined;

  /** Every tool of every phase, first occurrence of a name winning, in an order that never changes. */
  private allLifecycleTools(): Tool<any>[] {
    if (!this.lifecycleTools) {
      const all = [
        ...builtinTools(this.toolOptions()),
        ...(this.options.tools ?? []),
        finishExploreTool,
        submitPlanTool,
        completeTaskTool,
        completeMergeTool,
      ];
      this.lifecycleTools = all.filter((tool, i) => all.findIndex((other) => other.name === tool.name) === i);
    }
    return this.lifecycleTools;
  }

  private contextOption(agent: AgentState): { context?: ContextTracker } {
    if (!this.contexts.has(agent.id)) this.contexts.set(agent.id, contextTracker(this.options));
    const context = this.contexts.get(agent.id);
    return context ? { context } : {};
  }

  private async explore(agent: AgentState, workspace: Workspace): Promise<void> {
    const { closingCall } = await this.converse(agent, workspace, [...readOnlyTools(this.toolOptions()), finishExploreTool], "finish_explore");
    const input = closingCall.input as FinishExploreInput;
    agent.explore = input;
    if (input.next_phase === "PLAN" && agent.depth < this.state.limits.maxDepth) {
      this.nextPhase(agent, "PLAN");
    } else {
      const reason = input.next_phase === "PLAN" ? `the depth limit of ${this.state.limits.maxDepth} is reached, so you do the work yourself` : undefined;
      if (reason) this.emit({ type: "limit.reached", agentId: agent.id, limit: "maxDepth", value: this.state.limits.maxDepth, detail: `Agent ${agent.id} at depth ${agent.depth} may not plan subtasks` });
      this.nextPhase(agent, "COMPLETE", reason);
    }
  }

  private async plan(agent: AgentState): Promise<void> {
    const workspace = this.workspaces.get(agent.id)!;
    const { closingCall } = await this.converse(agent, workspace, [...readOnlyTools(this.toolOptions()), submitPlanTool], "submit_plan");
    const plan = closingCall.input as SubmitPlanInput;
    agent.plan = plan;
    if (plan.subtasks.length === 0) return this.nextPhase(agent, "COMPLETE", "the plan has no subtasks");
    if (!isForkable(workspace)) throw new ConfigError("Subtasks need a workspace that can fork (such as LocalWorkspace)");
    this.setPhase(agent, "SUMMON");
  }

  /** Creates, runs and merges the children of `agent`. Safe to call again after a resume. */
  private async summon(agent: AgentState, workspace: Workspace): Promise<void> {
    if (!isForkable(workspace)) throw new ConfigError("Subtasks need a workspace that can fork (such as LocalWorkspace)");
    const { limits } = this.state;
    const plan = agent.plan!;
    if (agent.children.length === 0) {
      let subtasks = plan.subtasks;
      if (subtasks.length > limits.maxChildren) {
        this.emit({ type: "limit.reached", agentId: agent.id, limit: "maxChildren", value: limits.maxChildren, detail: `${subtasks.length} subtasks planned; only the first ${limits.maxChildren} run` });
        subtasks = subtasks.slice(0, limits.maxChildren);
      }
      const room = limits.maxAgents - this.agents.size;
      if (subtasks.length > room) {
        this.emit({ type: "limit.reached", agentId: agent.id, limit: "maxAgents", value: limits.maxAgents, detail: `The tree may hold ${limits.maxAgents} agents; ${Math.max(0, room)} more can start` });
        subtasks = subtasks.slice(0, Math.max(0, room));
      }
      for (const [index, subtask] of subtasks.entries()) {
        const branch = childBranch(agent.branch, index, agent.parentId === null);
        const child = this.createAgent({
          id: agent.parentId === null ? subtaskLabel(index) : `${agent.id}-${subtaskLabel(index)}`,
          parentId: agent.id,
          depth: agent.depth + 1,
          branch,
          title: subtask.title,
          instructions: subtask.instructions + (subtask.paths?.length ? `\n\nExpected to touch: ${subtask.paths.join(", ")}` : ""),
        });
        agent.children.push(child.id);
        agent.merges[child.id] = { status: "pending" };
      }
      await this.snapshot();
    }

    // Fork every child first (fork serialises on the repository), then run them under the limit.
    const children = agent.children.map((id) => this.agents.get(id)!);
    for (const child of children) {
      if (child.phase === "DONE" && this.workspaces.has(child.id)) continue;
      const fresh = child.messages.length === 0;
      // A resumed run re-attaches to the branches its snapshot names; a fresh run never reuses one.
      const childWorkspace = await workspace.fork(child.branch, this.resumed ? { reattach: true } : {});
      this.workspaces.set(child.id, childWorkspace);
      if (fresh) {
        this.emit({ type: "git.branch", agentId: child.id, branch: child.branch, from: agent.branch, worktree: childWorkspace.root });
        this.emitSpawn(child);
      }
    }
    await runPool(
      children.filter((child) => child.phase !== "DONE"),
      this.state.maxConcurrency,
      (child) => this.runAgent(child, this.workspaces.get(child.id)!),
    );
    if (this.signal.aborted) throw this.signal.reason ?? new AbortedError();

    for (const child of children) {
      const merge = agent.merges[child.id]!;
      if (merge.status !== "pending" && merge.status !== "in_progress") continue;
      if (child.status !== "success") {
        merge.status = "skipped";
        continue;
      }
      await this.mergeChild(agent, workspace, child);
      await this.snapshot();
    }
    for (const child of children) {
      const childWorkspace = this.workspaces.get(child.id);
      if (childWorkspace && isForkable(childWorkspace)) await childWorkspace.dispose();
    }
    this.nextPhase(agent, "COMPLETE", undefined, this.childrenReport(agent));
  }

  private async mergeChild(parent: AgentState, workspace: ForkableWorkspace, child: AgentState): Promise<void> {
    const merge = parent.merges[child.id]!;
    if (merge.status === "in_progress" && merge.preMergeSha) await workspace.resetTo(merge.preMergeSha);
    // The parent's own uncommitted edits (there should be none in SUMMON) must not mix into the merge.
    await workspace.commit(`keen: ${parent.id} work before merging ${child.branch}`, this.authorOption());
    merge.preMergeSha = await workspace.head();
    merge.status = "in_progress";
    await this.snapshot();

    const message = `Merge ${child.branch}: ${child.title}`;
    let result = await workspace.merge(child.branch, message);
    let conflicted = result.status === "conflict" ? result.files : [];
    let outcome: "merged" | "resolved" | "rolled_back" = "merged";
    let sha: string | null = result.status === "merged" ? result.sha : null;

    const resolve = async (problem: string): Promise<boolean> => {
      if (this.state.onConflict !== "resolve") return false;
      try {
        sha = await this.resolveMerge(parent, workspace, child, problem);
        return (await this.validate(parent, workspace)) !== false;
      } catch (caught) {
        if (this.signal.aborted) throw caught;
        return false;
      }
    };

    if (result.status === "conflict") {
      outcome = (await resolve(`Merging ${child.branch} into ${parent.branch} conflicted in: ${conflicted.join(", ")}.`)) ? "resolved" : "rolled_back";
    } else {
      const validation = await this.validate(parent, workspace);
      if (validation === false) {
        outcome = (await resolve(`After merging ${child.branch} into ${parent.branch}, the validation command \`${this.validationCommand(parent)}\` fails. Fix the code so it passes.`)) ? "resolved" : "rolled_back";
      }
    }
    if (outcome === "rolled_back") {
      await workspace.resetTo(merge.preMergeSha);
      sha = null;
    }
    merge.status = outcome;
    this.emit({ type: "git.merge", agentId: parent.id, branch: child.branch, into: parent.branch, result: outcome, conflictedFiles: conflicted, sha });
  }

  /** The parent model fixes a conflicted or failing merge with file tools, ending with complete_merge. */
  private async resolveMerge(parent: AgentState, workspace: ForkableWorkspace, child: AgentState, problem: string): Promise<string> {
    appendUserText(
      parent.messages,
      `${problem}\nChild ${child.id} ("${child.title}") reported: ${child.summary ?? "(no summary)"}\nResolve it with the file tools (remove every conflict marker), then call complete_merge.`,
    );
    const tools = [...builtinTools(this.toolOptions()), completeMergeTool];
    const { closingCall } = await this.converse(parent, workspace, tools, "complete_merge");
    const note = (closingCall.input as { summary: string }).summary;
    const conflicted = await workspace.conflictedFiles();
    if (conflicted.length > 0) return workspace.commitMerge(`Merge ${child.branch}: ${child.title}\n\n${note}`);
    const { sha } = await workspace.commit(`Fix after merging ${child.branch}\n\n${note}`, this.authorOption());
    return sha ?? (await workspace.head());
  }

  private validationCommand(agent: AgentState): string | undefined {
    return agent.plan?.validation?.command ?? this.state.validation?.command;
  }

  /** Runs the validation command; returns undefined when there is none. */
  private async validate(agent: AgentState, workspace: Workspace): Promise<boolean | undefined> {
    const command = this.validationCommand(agent);
    if (!command) return undefined;
    const result = await workspace.exec(command, { timeoutMs: this.state.validation?.timeoutMs ?? 600_000, signal: this.signal });
    if (result.aborted) throw this.signal.reason ?? new AbortedError();
    const passed = result.exitCode === 0 && !result.timedOut;
    this.emit({
      type: "validation.result",
      agentId: agent.id,
      command,
      passed,
      exitCode: result.exitCode,
      output: result.output.length > VALIDATION_OUTPUT_LIMIT ? `…${result.output.slice(-VALIDATION_OUTPUT_LIMIT)}` : result.output,
    });
    return passed;
  }

  private async complete(agent: AgentState, workspace: Workspace): Promise<void> {
    const tools = [...builtinTools(this.toolOptions()), ...(this.options.tools ?? []), completeTaskTool];
    let { closingCall } = await this.converse(agent, workspace, tools, "complete_task");
    let input = closingCall.input as CompleteTaskInput;
    if (input.status === "success" && (await this.validate(agent, workspace)) === false) {
      appendUserText(agent.messages, `The validation command \`${this.validationCommand(agent)}\` fails. Fix it, then call complete_task again.`);
      ({ closingCall } = await this.converse(agent, workspace, tools, "complete_task"));
      input = closingCall.input as CompleteTaskInput;
      if (input.status === "success" && (await this.validate(agent, workspace)) === false) {
        input = { status: "failed", summary: `${input.summary}\n(validation still fails)` };
      }
    }
    agent.status = input.status;
    agent.summary = input.summary;
    agent.phase = "DONE";
  }

  private nextPhase(agent: AgentState, phase: "PLAN" | "COMPLETE", reason?: string, report?: string): void {
    const text = [report, phaseMessage(phase, reason)].filter(Boolean).join("\n\n");
    appendUserText(agent.messages, text);
    this.setPhase(agent, phase);
  }

  private childrenReport(agent: AgentState): string {
    const lines = agent.children.map((id) => {
      const child = this.agents.get(id)!;
      const merge = agent.merges[id]!;
      const mergeText = { merged: "merged", resolved: "merged after resolving", rolled_back: "rolled back (branch kept)", skipped: "not merged", pending: "not merged", in_progress: "not merged" }[merge.status];
      return `- ${child.id} "${child.title}" on ${child.branch}: ${child.status ?? "unknown"}, ${mergeText}. ${child.summary ?? ""}`.trim();
    });
    return `Your subtasks finished:\n${lines.join("\n")}`;
  }

  private async commitWork(agent: AgentState, workspace: Workspace): Promise<void> {
    try {
      if (isForkable(workspace)) await workspace.abortMerge();
      const message = `${agent.title}\n\n${agent.summary ?? ""}${agent.status && agent.status !== "success" ? `\n\nStatus: ${agent.status}` : ""}\n\nAgent: ${agent.id} (keen)`;
      const { sha } = await workspace.commit(message.replace(/\n{3,}/g, "\n\n"), this.authorOption());
      if (sha) {
        agent.commit = sha;
        this.emit({ type: "git.commit", agentId: agent.id, branch: agent.branch, sha, message: agent.title });
      } else {
        agent.commit = agent.commit ?? null;
      }
    } catch (caught) {
      agent.status = "error";
      agent.summary = `Could not commit the work: ${caught instanceof Error ? caught.message : String(caught)}`;
    }
  }

  /** A resumed run may find a parent mid-merge; put it back at the pre-merge commit. */
  private async cleanUpInterruptedMerges(root: Workspace): Promise<void> {
    if (!isForkable(root)) return;
    for (const agent of this.agents.values()) {
      for (const [childId, merge] of Object.entries(agent.merges)) {
        if (merge.status !== "in_progress" || !merge.preMergeSha) continue;
        const workspace = agent.id === "root" ? root : await root.fork(agent.branch, { reattach: true });
        await workspace.resetTo(merge.preMergeSha);
        merge.status = "pending";
        void childId;
      }
    }
    // Agents that were running are continued; their worktrees are reopened by fork().
    for (const agent of this.agents.values()) {
      if (agent.id !== "root" && !this.workspaces.has(agent.id) && agent.phase !== "DONE") {
        this.workspaces.set(agent.id, await root.fork(agent.branch, { reattach: true }));
      }
    }
  }

  private treeUsage(agent: AgentState): Usage {
    return agent.children.reduce((sum, id) => addUsage(sum, this.treeUsage(this.agents.get(id)!)), agent.usage);
  }

  private toolOptions() {
    return this.options.runCommand ? { runCommand: this.options.runCommand } : {};
  }

  private authorOption() {
    return this.options.commitAuthor ? { author: this.options.commitAuthor } : {};
  }
}

function appendUserText(messages: Message[], text: string): void {
  const last = messages.at(-1);
  if (last?.role === "user") {
    last.content = typeof last.content === "string" ? `${last.content}\n\n${text}` : [...last.content, { type: "text", text }];
  } else {
    messages.push({ role: "user", content: text });
  }
}

/** Runs `task` over `items`, at most `limit` at a time; never rejects (tasks handle their own failures). */
async function runPool<T>(items: T[], limit: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++]!;
      await task(item).catch(() => {});
    }
  });
  await Promise.all(workers);
}

function firstLine(text: string): string {
  const line = text.trim().split("\n")[0] ?? "";
  return line.length > 72 ? `${line.slice(0, 71)}…` : line;
}

function reasonText(reason: unknown): string {
  return reason instanceof Error ? reason.message : typeof reason === "string" ? reason : "aborted";
}
