import { emptyUsage, type KeenEvent, type Phase, type RunStatus, type TaskSnapshot, type Usage } from "@keen/agent-core";

/** How an agent looks on screen: the lifecycle status, refined by what happened to its merge. */
export type AgentDisplayStatus = "running" | "completed" | "failed" | "aborted" | "error" | "interrupted" | "rolled back";

/** One agent of the tree, as far as the event stream has told. */
export interface AgentNode {
  id: string;
  parentId: string | null;
  depth: number;
  title: string;
  branch: string;
  /** The current phase, or DONE once the agent completed. */
  phase: Phase | "DONE" | null;
  /** Set by `agent.completed`; undefined while the agent runs. */
  status?: RunStatus;
  /** What the parent's merge of this agent's branch did. */
  merge?: "merged" | "resolved" | "rolled_back";
  conflictedFiles: string[];
  /** This agent's own token usage (children not included). */
  usage: Usage;
  /** The tool the agent is running right now, if any. */
  activeTool?: string;
  /** Child ids in spawn order. */
  children: string[];
}

/** The whole run as a live view needs it; build it with {@link reduceTree} (or {@link treeFromSnapshot}). */
export interface TreeState {
  runId: string | null;
  vision: string;
  repo: string | null;
  model: string | null;
  status: RunStatus | "running";
  /** Agents by id; `roots` and each node's `children` give the order. */
  agents: Record<string, AgentNode>;
  roots: string[];
  /** The last validation run, with the agent it ran for. */
  lastValidation?: { agentId: string; command: string; passed: boolean };
  limits: string[];
  /** Total usage once the run completed. */
  usage?: Usage;
  durationMs?: number;
  error?: { code: string; message: string };
  /** Seq of the last event applied; older or repeated events are ignored. */
  lastSeq: number;
}

/** The state before any event arrived. */
export function emptyTree(): TreeState {
  return { runId: null, vision: "", repo: null, model: null, status: "running", agents: {}, roots: [], limits: [], lastSeq: -1 };
}

/**
 * Applies one event to the tree and returns the new state; the input is never changed, so a
 * renderer can keep the previous state to compare. Events the view does not show pass through.
 *
 * @example
 * let tree = emptyTree();
 * for await (const event of run) tree = reduceTree(tree, event);
 * console.log(renderTree(tree, { width: 100 }));
 */
export function reduceTree(state: TreeState, event: KeenEvent): TreeState {
  if (event.seq <= state.lastSeq) return state;
  const next: TreeState = { ...state, lastSeq: event.seq, runId: state.runId ?? event.runId };
  switch (event.type) {
    case "run.started":
      return { ...next, vision: event.vision, repo: event.repo, model: event.model, status: "running" };
    case "agent.spawned": {
      if (state.agents[event.agentId]) return next;
      const node: AgentNode = {
        id: event.agentId,
        parentId: event.parentId,
        depth: event.depth,
        title: event.title,
        branch: event.branch,
        phase: null,
        conflictedFiles: [],
        usage: emptyUsage(),
        children: [],
      };
      const agents = { ...state.agents, [node.id]: node };
      const parent = event.parentId === null ? undefined : agents[event.parentId];
      if (parent) agents[parent.id] = { ...parent, children: [...parent.children, node.id] };
      return { ...next, agents, roots: parent ? state.roots : [...state.roots, node.id] };
    }
    case "agent.phase":
      return updateAgent(next, event.agentId, { phase: event.phase });
    case "model.usage":
      return updateAgent(next, event.agentId, { usage: event.agentTotal });
    case "tool.started":
      return updateAgent(next, event.agentId, { activeTool: event.name });
    case "tool.completed":
      return updateAgent(next, event.agentId, { activeTool: undefined });
    case "agent.completed":
      return updateAgent(next, event.agentId, { status: event.status, phase: "DONE", activeTool: undefined });
    case "git.merge": {
      const child = Object.values(state.agents).find((agent) => agent.parentId === event.agentId && agent.branch === event.branch);
      return child ? updateAgent(next, child.id, { merge: event.result, conflictedFiles: event.conflictedFiles }) : next;
    }
    case "validation.result":
      return { ...next, lastValidation: { agentId: event.agentId, command: event.command, passed: event.passed } };
    case "limit.reached":
      return { ...next, limits: [...state.limits, `${event.limit}: ${event.detail}`] };
    case "run.completed":
      return {
        ...next,
        status: event.status,
        usage: event.usage,
        durationMs: event.durationMs,
        ...(event.error ? { error: event.error } : {}),
      };
    default:
      return next;
  }
}

function updateAgent(state: TreeState, id: string, patch: Partial<AgentNode>): TreeState {
  const agent = state.agents[id];
  if (!agent) return state;
  return { ...state, agents: { ...state.agents, [id]: { ...agent, ...patch } } };
}

/**
 * The tree a resumed run starts from: the agents already in the snapshot, with their phases,
 * statuses, merges and usage. Events of the resumed run then apply on top.
 *
 * @example
 * const tree = treeFromSnapshot(TaskSnapshot.parse(JSON.parse(text)));
 */
export function treeFromSnapshot(snapshot: TaskSnapshot): TreeState {
  const agents: Record<string, AgentNode> = {};
  const roots: string[] = [];
  for (const agent of snapshot.agents) {
    agents[agent.id] = {
      id: agent.id,
      parentId: agent.parentId,
      depth: agent.depth,
      title: agent.title,
      branch: agent.branch,
      phase: agent.phase,
      ...(agent.status && agent.phase === "DONE" ? { status: agent.status } : {}),
      conflictedFiles: [],
      usage: agent.usage,
      children: [...agent.children],
    };
    if (agent.parentId === null) roots.push(agent.id);
  }
  for (const agent of snapshot.agents) {
    for (const [childId, merge] of Object.entries(agent.merges)) {
      const child = agents[childId];
      if (child && (merge.status === "merged" || merge.status === "resolved" || merge.status === "rolled_back")) child.merge = merge.status;
    }
  }
  return {
    ...emptyTree(),
    runId: snapshot.runId,
    vision: snapshot.vision,
    agents,
    roots,
    lastSeq: snapshot.nextSeq - 1,
  };
}

/** The status shown for an agent: a rolled-back merge outranks the child's own success. */
export function displayStatus(agent: AgentNode): AgentDisplayStatus {
  if (agent.merge === "rolled_back") return "rolled back";
  switch (agent.status) {
    case undefined:
      return "running";
    case "success":
      return "completed";
    default:
      return agent.status;
  }
}

/** Agents in display order: depth first, children in spawn order. */
export function agentsInOrder(state: TreeState): AgentNode[] {
  const out: AgentNode[] = [];
  const visit = (id: string) => {
    const agent = state.agents[id];
    if (!agent) return;
    out.push(agent);
    for (const child of agent.children) visit(child);
  };
  for (const root of state.roots) visit(root);
  return out;
}
