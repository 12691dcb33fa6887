import { AbortedError, isKeenError } from "../errors.js";
import type { KeenEventInput } from "../events.js";
import { addUsage, emptyUsage, type Model, type Usage } from "../model/model.js";
import type { ContextSettings, ContextTracker } from "../run/context.js";
import type { EventLog } from "../run/event-log.js";
import type { EventStream } from "../run/event-stream.js";
import type { Tool } from "../tools/define-tool.js";
import { builtinTools, type RunCommandOptions } from "../tools/index.js";
import type { Workspace } from "../workspace/workspace.js";
import { BudgetSpent, TokenBudget } from "./budget.js";
import { contextTracker } from "./context-tracker.js";
import { completeMergeTool, completeTaskTool, finishExploreTool, submitPlanTool } from "./phase-tools.js";
import { modelPrice } from "./pricing.js";
import { SnapshotQueue } from "./snapshots.js";
import type { AgentState, TaskSnapshot } from "./task-state.js";

/** Settings every phase reads; the union of what `startTask` and `startRun` accept. */
export interface EngineSettings {
  workspace: Workspace;
  model: Model;
  /** Extra tools (lifecycle: offered in COMPLETE next to the built-ins; single loop: the whole tool list). */
  tools?: Tool<any>[];
  onConflict?: "resolve" | "rollback";
  validation?: { command: string; timeoutMs?: number };
  commitAuthor?: { name: string; email: string };
  /** Keep each agent's work in a commit when it ends. Default true. */
  commit?: boolean;
  maxTokens?: number;
  thinking?: { budgetTokens: number };
  runCommand?: RunCommandOptions;
  contextWindow?: number;
  context?: Omit<ContextSettings, "contextWindow"> | false;
  onSnapshot?: (snapshot: TaskSnapshot) => void | Promise<void>;
  /** Where the host keeps the run's snapshot; echoed as `snapshot` in `run.completed`. */
  snapshotLocation?: string;
  /** Where the run's events are kept. Default: the last 10 000 in memory. */
  eventLog?: EventLog;
  /** Most events held in memory for fast reading. Default 1000. */
  eventWindow?: number;
  /**
   * The run branch, in its own worktree: `true` (the default) for `keen/<short run id>`, or a
   * name; the checkout is only read (its HEAD, or `base`). `false` works in the given checkout.
   */
  branch?: string | boolean;
  /** Commit-ish the run branch starts from. Default: the checkout's HEAD. */
  base?: string;
  /** Copy the checkout's uncommitted and untracked (non-ignored) files into the run branch as its first commit. */
  includeUncommitted?: boolean;
}

/**
 * The state one run shares between its agents and phases: the agents, their workspaces, the
 * event stream, the budget, snapshots. Phase functions read and change it; only the state
 * machine (`machine.ts`) changes an agent's phase.
 */
export class AgentTree {
  readonly agents = new Map<string, AgentState>();
  readonly workspaces = new Map<string, Workspace>();
  /**
   * Agents whose worktree this process checked out fresh and that nothing has written since
   * (only read-only turns ran; no validation, no SUMMON), with the commit checked out: their
   * first checkpoint is that commit's tree, saved without looking at the files (in memory only:
   * a resumed run looks at them).
   */
  readonly pristine = new Map<string, string>();
  readonly budget: TokenBudget;
  /** The model, with the token budget checked before every request. */
  readonly model: Model;
  private readonly contexts = new Map<string, ContextTracker | undefined>();
  private readonly snapshots: SnapshotQueue;
  private lifecycleTools: Tool<any>[] | undefined;
  /** Why the run was interrupted (resumable), once it is. */
  interruption: { code: string; message: string } | undefined;
  /** Runs one agent to its end; set by the engine (the state machine's driver). */
  drive!: (agent: AgentState, workspace: Workspace) => Promise<void>;

  constructor(
    readonly state: TaskSnapshot,
    readonly settings: EngineSettings,
    readonly events: EventStream,
    readonly controller: AbortController,
    /** The system prompt of every agent and phase; set once before the root's first request. */
    public system: string,
  ) {
    for (const agent of state.agents) this.agents.set(agent.id, agent);
    const spentBefore = state.agents.reduce((sum, agent) => addUsage(sum, agent.usage), emptyUsage());
    this.budget = new TokenBudget(
      state.limits.tokenBudget,
      state.tokensSpent,
      (limit, detail) => {
        const value = limit === "tokenBudget" ? state.limits.tokenBudget! : state.limits.maxBudgetUsd!;
        this.events.emit({ type: "limit.reached", agentId: "root", limit, value, detail });
        this.controller.abort(new BudgetSpent(limit === "tokenBudget" ? `${value} tokens` : `$${value}`));
      },
      { limit: state.limits.maxBudgetUsd, price: modelPrice(settings.model.id), spentBefore },
    );
    this.model = this.budget.guard(settings.model);
    this.snapshots = new SnapshotQueue(settings.onSnapshot);
  }

  /**
   * Stops every agent because the model cannot be reached (after its retries), keeping each
   * agent's phase so the run can be resumed. The first call wins.
   */
  interrupt(cause: unknown): void {
    if (this.interruption) return;
    const message = cause instanceof Error ? cause.message : String(cause);
    this.interruption = { code: isKeenError(cause) ? cause.code : "model_error", message };
    this.controller.abort(new AbortedError(`Interrupted: ${message}`));
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  emit(event: KeenEventInput): void {
    // Counted as it was before any listener saw the event (and could change it), after the event.
    const usage = event.type === "model.usage" ? { ...event.usage } : undefined;
    this.events.emit(event);
    if (usage) {
      this.budget.count(usage);
      this.state.tokensSpent = this.budget.spent;
    }
  }

  /** Persists the tree's state; snapshots arrive in order. */
  snapshot(): Promise<void> {
    this.state.nextSeq = this.events.seq;
    this.state.tokensSpent = this.budget.spent;
    this.state.agents = [...this.agents.values()];
    return this.snapshots.push(this.state);
  }

  createAgent(init: Pick<AgentState, "id" | "parentId" | "depth" | "branch" | "title" | "instructions" | "phase">): AgentState {
    const agent: AgentState = { ...init, messages: [], children: [], merges: {}, usage: emptyUsage() };
    this.agents.set(agent.id, agent);
    return agent;
  }

  emitSpawn(agent: AgentState): void {
    this.emit({ type: "agent.spawned", agentId: agent.id, parentId: agent.parentId, branch: agent.branch, depth: agent.depth, title: agent.title });
    if (agent.phase !== "DONE") this.emit({ type: "agent.phase", agentId: agent.id, phase: agent.phase, previous: null });
  }

  /** Usage of `agent` and all its descendants. */
  treeUsage(agent: AgentState): Usage {
    // A new object even without children: events carry it, and the agent's own must not change through them.
    return agent.children.reduce((sum, id) => addUsage(sum, this.treeUsage(this.agents.get(id)!)), { ...agent.usage });
  }

  /** The agent's context tracker, followed across its phases (undefined when pruning is off). */
  contextFor(agent: AgentState): ContextTracker | undefined {
    if (!this.contexts.has(agent.id)) this.contexts.set(agent.id, contextTracker(this.settings));
    return this.contexts.get(agent.id);
  }

  toolOptions(): { runCommand?: RunCommandOptions } {
    return this.settings.runCommand ? { runCommand: this.settings.runCommand } : {};
  }

  authorOption(): { author?: { name: string; email: string } } {
    return this.settings.commitAuthor ? { author: this.settings.commitAuthor } : {};
  }

  /** Every tool of every phase, first occurrence of a name winning, in an order that never changes. */
  allLifecycleTools(): Tool<any>[] {
    if (!this.lifecycleTools) {
      const all = [...builtinTools(this.toolOptions()), ...(this.settings.tools ?? []), finishExploreTool, submitPlanTool, completeTaskTool, completeMergeTool];
      this.lifecycleTools = all.filter((tool, i) => all.findIndex((other) => other.name === tool.name) === i);
    }
    return this.lifecycleTools;
  }
}
