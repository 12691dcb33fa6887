/**
 * The one module that calls agent-core: everything the server needs from a run (start or
 * resume, its events, snapshots, the final tree and usage) passes through `executeRun`.
 */
import { anthropic, LocalWorkspace, resumeTask, runBranchName, serializeSnapshot, startTask, TaskSnapshot, type AgentState, type KeenEvent } from "@keen/agent-core";

export interface RunUsage {
  inputTokens: number;
  outputTokens: number;
  cacheCreationInputTokens: number;
  cacheReadInputTokens: number;
}

/** One agent of the tree as the server stores it. */
export interface AgentRecord {
  id: string;
  parentId: string | null;
  depth: number;
  branch: string;
  title: string;
  phase: string;
  status: string | null;
  usage: RunUsage;
}

export interface ExecuteRunInput {
  runId: string;
  /** The run's checkout (a git work tree the server cloned). */
  checkout: string;
  /** Where child worktrees go, inside the run's folder. */
  worktreesDir: string;
  vision: string;
  model: { id: string; baseUrl?: string | undefined; apiKey?: string | undefined; maxRetries?: number | undefined };
  options: { maxDepth?: number | undefined; maxChildren?: number | undefined; validate?: string | undefined; onConflict?: "resolve" | "rollback" | undefined };
  /** A snapshot from an earlier attempt: the run continues from it instead of starting over. */
  snapshot?: unknown;
  sandbox: boolean;
  signal: AbortSignal;
  onEvent(event: KeenEvent): void;
  /** Each snapshot of the run, as JSON text (`serializeSnapshot`), with its agents. */
  onSnapshot(snapshot: { json: string; agents: AgentRecord[] }): void;
}

export interface ExecuteRunResult {
  /** `interrupted`: the model stayed unavailable after its retries; the snapshot can resume the run. */
  status: "success" | "failed" | "aborted" | "error" | "interrupted";
  summary: string;
  usage: RunUsage;
  error?: { code: string; message: string } | undefined;
  agents: AgentRecord[];
  branch: string;
  commit: string | null;
}

function agentRecord(agent: AgentState): AgentRecord {
  return {
    id: agent.id,
    parentId: agent.parentId,
    depth: agent.depth,
    branch: agent.branch,
    title: agent.title,
    phase: agent.phase,
    status: agent.status ?? null,
    usage: agent.usage,
  };
}

/**
 * The branch a run's result is on, `keen/<8 hex chars>` of the run id: the run works on it in its
 * own worktree, forked from the checkout's HEAD (its base commit); the checkout is only read.
 */
export function runBranchOf(runId: string): string {
  return runBranchName(true, runId);
}

/**
 * Runs (or resumes) the agent lifecycle on a checkout with the sandbox on, reporting every
 * event and snapshot as they happen.
 *
 * @example
 * const result = await executeRun({ runId, checkout, worktreesDir, vision, model: { id: "claude-sonnet-4-5" }, options: {}, sandbox: true, signal, onEvent, onSnapshot });
 */
export async function executeRun(input: ExecuteRunInput): Promise<ExecuteRunResult> {
  const workspace = await LocalWorkspace.open(input.checkout, { sandbox: input.sandbox, worktreesDir: input.worktreesDir });
  const model = anthropic({
    model: input.model.id,
    ...(input.model.apiKey ? { apiKey: input.model.apiKey } : {}),
    ...(input.model.baseUrl ? { baseURL: input.model.baseUrl } : {}),
    ...(input.model.maxRetries !== undefined ? { retry: { maxRetries: input.model.maxRetries } } : {}),
  });
  const onSnapshot = (snapshot: TaskSnapshot) => input.onSnapshot({ json: serializeSnapshot(snapshot), agents: snapshot.agents.map(agentRecord) });
  const common = { workspace, model, signal: input.signal, onSnapshot };
  const task =
    input.snapshot !== undefined && input.snapshot !== null
      ? resumeTask(TaskSnapshot.parse(input.snapshot), common)
      : startTask({
          ...common,
          runId: input.runId,
          vision: input.vision,
          branch: runBranchOf(input.runId),
          limits: {
            ...(input.options.maxDepth !== undefined ? { maxDepth: input.options.maxDepth } : {}),
            ...(input.options.maxChildren !== undefined ? { maxChildren: input.options.maxChildren } : {}),
          },
          ...(input.options.validate ? { validation: { command: input.options.validate } } : {}),
          ...(input.options.onConflict ? { onConflict: input.options.onConflict } : {}),
        });
  // Events emitted before this line (none today) are taken from the history, then live ones.
  for (const event of task.events.history) input.onEvent(event);
  task.events.on("*", (event) => input.onEvent(event));
  const result = await task.result;
  return {
    status: result.status,
    summary: result.summary,
    usage: result.usage,
    error: result.error,
    agents: result.agents.map(agentRecord),
    branch: result.branch,
    commit: result.commit,
  };
}
