import type { Message } from "../../model/model.js";
import { SNAPSHOT_VERSION, type AgentState, type TaskSnapshot } from "../task-state.js";

/**
 * An agent of a hand-made snapshot: `root` or a child of it, in COMPLETE, with `messages` (one
 * user message by default) and, unless `journal` is false, one journal entry.
 */
export function agentFixture(id: string, messages: Message[] = [{ role: "user", content: `Task of ${id}` }], journal = true): AgentState {
  return {
    id,
    parentId: id === "root" ? null : "root",
    depth: id === "root" ? 0 : 1,
    branch: `keen/1${id === "root" ? "" : `-agents/summon-${id}`}`,
    title: id,
    instructions: "Do it",
    phase: "COMPLETE",
    messages,
    children: [],
    merges: {},
    usage: { inputTokens: 1, outputTokens: 2, cacheCreationInputTokens: 0, cacheReadInputTokens: 0 },
    ...(journal ? { journal: [{ path: `${id}.md`, mode: 0o644, text: `${id}\n` }] } : {}),
  };
}

/** A hand-made snapshot of a run holding `agents`. */
export function snapshotFixture(agents: AgentState[]): TaskSnapshot {
  return {
    version: SNAPSHOT_VERSION,
    runId: "run_1",
    vision: "Do it",
    nextSeq: 3,
    limits: { maxDepth: 1, maxChildren: 2, maxAgents: 3, maxTurnsPerPhase: 5 },
    maxConcurrency: 1,
    onConflict: "resolve",
    tokensSpent: 3,
    agents,
  };
}
