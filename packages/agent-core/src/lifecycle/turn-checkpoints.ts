/**
 * Crash safety of a turn. The rule: before a turn whose tools may write, the agent's files are
 * saved as a checkpoint labelled with the turn's number; the turn counts as done only once the
 * snapshot holding its tool results is handed over. A resume that finds a checkpoint of the
 * turn it is about to repeat (the snapshot never recorded that turn as done) puts the files back
 * to the checkpoint first, so the repeated turn starts from exactly where the lost one did and
 * nothing it wrote is applied twice.
 *
 * Three things keep this off a turn's critical path:
 * - The checkpoint is saved while the turn's model request is in flight (`runConversation`'s
 *   `checkpoint`), and awaited only before the turn's tools run. That relies on an invariant of
 *   the lifecycle: an agent's worktree is written only by its own driver, one step at a time
 *   (its tools; its commits; in SUMMON, the merges of its children, when it is not conversing),
 *   and a command cannot outlive its tool call (its process group is killed), so while the agent
 *   waits for the model nothing changes its files.
 * - A turn whose tools are all read-only cannot change the files: its checkpoint is called off
 *   if it is still being saved (the last one, older, stays: a resume repeats such a turn as is).
 * - After a read-only turn whose files a checkpoint holds, nothing is saved for the next turns
 *   until one may have written: the agent's `unchangedSince` (in the snapshot) names that
 *   checkpoint's turn, and a resume treats it as the checkpoint of the turn it repeats.
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

/** Saves the agent's files before its next turn (number `agent.turns`); `signal` calls it off. */
export async function checkpointTurn(tree: AgentTree, agent: AgentState, workspace: Workspace, signal?: AbortSignal): Promise<void> {
  if (!isCheckpointable(workspace)) return;
  await workspace.checkpoint(checkpointKey(tree.state.runId, agent.id), `turn ${agent.turns ?? 0}`, signal ? { signal } : {});
}

/**
 * Records a completed turn; the caller snapshots next. `checkpointed`: the turn ran under
 * `turnCheckpoints`, with `readOnly` telling whether all its tools were read-only and `saved`
 * whether its own checkpoint was saved. After a read-only turn whose files a checkpoint holds
 * (its own, or the one `unchangedSince` already names), `unchangedSince` names that checkpoint;
 * otherwise none is known to hold the files.
 */
export function countTurn(agent: AgentState, checkpointed?: { readOnly: boolean; saved: boolean }): void {
  const done = agent.turns ?? 0;
  if (!checkpointed?.readOnly) delete agent.unchangedSince;
  else if (agent.unchangedSince === undefined && checkpointed.saved) agent.unchangedSince = done;
  agent.turns = done + 1;
}

/**
 * The checkpoints of one conversation that may write (`converse`): `save` runs as each turn
 * starts (with its model request) and saves nothing while `unchangedSince` names a checkpoint
 * that still holds the files; `count` records the turn once its tools have run.
 */
export function turnCheckpoints(tree: AgentTree, agent: AgentState, workspace: Workspace): { save(signal: AbortSignal): Promise<void>; count(readOnly: boolean): void } {
  let savedTurn: number | undefined;
  return {
    async save(signal) {
      if (agent.unchangedSince !== undefined) return;
      const turn = agent.turns ?? 0;
      await checkpointTurn(tree, agent, workspace, signal);
      savedTurn = turn;
    },
    count(readOnly) {
      countTurn(agent, { readOnly, saved: savedTurn === (agent.turns ?? 0) });
    },
  };
}

/**
 * Ends what `countTurn` carried over between turns: the next conversation's first turn saves a
 * checkpoint of its own (between conversations, merges and commits may change the files).
 */
export function forgetUnchangedFiles(agent: AgentState): void {
  delete agent.unchangedSince;
}

/**
 * On resume, before an agent goes on: when its checkpoint belongs to the turn it is about to
 * repeat, puts its files back to that checkpoint (in a worktree keen created; in a user's
 * checkout nothing is touched and a `turn.restored` event says so).
 */
export async function restoreInterruptedTurn(tree: AgentTree, agent: AgentState, workspace: Workspace): Promise<void> {
  // No conversation yet, so no turn was sent that could have been cut short: a checkpoint is only
  // saved during a turn, after a snapshot holding the conversation's first message.
  if (!isCheckpointable(workspace) || agent.phase === "DONE" || agent.messages.length === 0) return;
  const key = checkpointKey(tree.state.runId, agent.id);
  const saved = await workspace.readCheckpoint(key);
  const match = saved ? LABEL.exec(saved.label) : null;
  if (!match) return;
  const turn = Number(match[1]);
  const done = agent.turns ?? 0;
  // The checkpointed turn was saved as done: the files hold its effects, and nothing that may
  // write ran since, unless every turn since was read-only (then the checkpoint is also the
  // one of the turn to repeat, which may have written).
  if (turn < done && agent.unchangedSince !== turn) return;
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

/** The agents of a tree whose checkpoint this process has deleted (and that take no more turns). */
const dropped = new WeakMap<AgentTree, Set<string>>();

/** Deletes an agent's checkpoint once its work is committed. */
export async function dropTurnCheckpoint(tree: AgentTree, agent: AgentState, workspace: Workspace): Promise<void> {
  if (!isCheckpointable(workspace)) return;
  try {
    await workspace.dropCheckpoint(checkpointKey(tree.state.runId, agent.id));
  } catch {
    return; // Left for the run's end, or for the next run's recovery.
  }
  let agents = dropped.get(tree);
  if (!agents) dropped.set(tree, (agents = new Set()));
  agents.add(agent.id);
}

/**
 * Deletes every agent's checkpoint of the run (when it has finished for good), except those this
 * process already deleted when the agent's work was committed. After a resume that set is empty,
 * so checkpoints left by the process that was stopped go too.
 */
export async function dropRunCheckpoints(tree: AgentTree, workspace: Workspace): Promise<void> {
  const done = dropped.get(tree);
  for (const agent of tree.agents.values()) {
    if (!done?.has(agent.id)) await dropTurnCheckpoint(tree, agent, workspace);
  }
}
