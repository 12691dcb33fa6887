/**
 * Crash safety of a turn. The rule: before a turn whose tools may write, the agent's files are
 * saved as a checkpoint labelled with the turn's number; the turn counts as done only once the
 * snapshot holding its tool results is handed over. A resume that finds a checkpoint of the
 * turn it is about to repeat (the snapshot never recorded that turn as done) puts the files back
 * to the checkpoint first, so the repeated turn starts from exactly where the lost one did and
 * nothing it wrote is applied twice.
 */
import { createHash } from "node:crypto";
import { isCheckpointable, type Workspace } from "../workspace/workspace.js";
import type { AgentState } from "./task-state.js";
import type { AgentTree } from "./tree.js";

const LABEL = /^turn (\d+)$/;

/** The checkpoint key of an agent: `<run id>/<agent id>`, each made safe for a ref name. */
export function checkpointKey(runId: string, agentId: string): string {
  const part = (text: string) => {
    const clean = text.replace(/[^A-Za-z0-9_-]/g, "_") || "_";
    return clean === text ? clean : `${clean}-${createHash("sha256").update(text).digest("hex").slice(0, 8)}`;
  };
  return `${part(runId)}/${part(agentId)}`;
}

/** Saves the agent's files before its next turn (number `agent.turns`). */
export async function checkpointTurn(tree: AgentTree, agent: AgentState, workspace: Workspace): Promise<void> {
  if (!isCheckpointable(workspace)) return;
  await workspace.checkpoint(checkpointKey(tree.state.runId, agent.id), `turn ${agent.turns ?? 0}`);
}

/** Records a completed turn; the caller snapshots next. */
export function countTurn(agent: AgentState): void {
  agent.turns = (agent.turns ?? 0) + 1;
}

/**
 * On resume, before an agent goes on: when its checkpoint belongs to the turn it is about to
 * repeat, puts its files back to that checkpoint (in a worktree keen created; in a user's
 * checkout nothing is touched and a `turn.restored` event says so).
 */
export async function restoreInterruptedTurn(tree: AgentTree, agent: AgentState, workspace: Workspace): Promise<void> {
  if (!isCheckpointable(workspace) || agent.phase === "DONE") return;
  const key = checkpointKey(tree.state.runId, agent.id);
  const saved = await workspace.readCheckpoint(key);
  const match = saved ? LABEL.exec(saved.label) : null;
  if (!match) return;
  const turn = Number(match[1]);
  const done = agent.turns ?? 0;
  // The checkpointed turn was saved as done: the files hold its effects, and nothing ran since.
  if (turn < done) return;
  const skip = (detail: string) => tree.emit({ type: "turn.restored", agentId: agent.id, branch: agent.branch, turn: done, result: "skipped", files: [], detail });
  if (turn > done) {
    skip(`The snapshot is older than the agent's files (checkpoint of turn ${turn}, snapshot at turn ${done}); the files are left as they are`);
    return;
  }
  if (!workspace.restorable) {
    skip(`${agent.id} works in ${workspace.root}, a checkout keen did not create: keen never puts back files there, so what the interrupted turn wrote stays`);
    return;
  }
  const { changed } = await workspace.restoreCheckpoint(key);
  tree.emit({ type: "turn.restored", agentId: agent.id, branch: agent.branch, turn: done, result: "restored", files: changed });
}

/** Deletes an agent's checkpoint once its work is committed. */
export async function dropTurnCheckpoint(tree: AgentTree, agent: AgentState, workspace: Workspace): Promise<void> {
  if (!isCheckpointable(workspace)) return;
  await workspace.dropCheckpoint(checkpointKey(tree.state.runId, agent.id)).catch(() => {});
}

/** Deletes every agent's checkpoint of the run (when it has finished for good). */
export async function dropRunCheckpoints(tree: AgentTree, workspace: Workspace): Promise<void> {
  for (const agent of tree.agents.values()) await dropTurnCheckpoint(tree, agent, workspace);
}
