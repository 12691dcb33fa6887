/**
 * Crash safety of a turn. The rule: before a turn whose tools may write, the agent's files are
 * saved as a checkpoint labelled with the turn's number; the turn counts as done only once the
 * snapshot holding its tool results is handed over. A resume that finds a checkpoint of the
 * turn it is about to repeat (the snapshot never recorded that turn as done) puts the files back
 * to the checkpoint first, so the repeated turn starts from exactly where the lost one did and
 * nothing it wrote is applied twice.
 *
 * What keeps this off a turn's critical path:
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
 * - A turn whose tools wrote only through keen's own file tools (`journaled`: known paths) saves
 *   no checkpoint for the next turn either: the files it wrote, as it left them (bytes and
 *   permission bits, or absence), join the agent's `journal` in the snapshot that records the
 *   turn, beside `unchangedSince`. A resume puts back that checkpoint and then writes the
 *   journal over it, which is exactly the files as the last recorded turn left them. A turn
 *   that ran anything else that may write (`run_command`, a tool of the host's) ends the
 *   journal, and so does one that would take it past `JOURNAL_MAX_FILES` files or
 *   `JOURNAL_MAX_BYTES` of content, or that wrote a file the journal cannot replay exactly (a
 *   path through a symbolic link): the next turn saves a checkpoint of its own.
 * - The first checkpoint of a worktree the run checked out, with only read-only turns since, is
 *   the files of its commit: no ref is saved and no git process started; the agent's
 *   `checkpointCommit` in the snapshot names the turn and the commit instead, and a resume puts
 *   back that commit's files as it would a saved checkpoint's (`checkpointTurn`).
 */
import { createHash } from "node:crypto";
import { fileStateBytes, readFileStates } from "../workspace/write-journal.js";
import { isCheckpointable, type FileState, type Workspace } from "../workspace/workspace.js";
import type { AgentState } from "./task-state.js";
import type { AgentTree } from "./tree.js";

const LABEL = /^turn (\d+)$/;

/** Most files an agent's journal holds; a turn that would take it past ends it. */
export const JOURNAL_MAX_FILES = 200;
/** Most bytes of content an agent's journal holds; a turn that would take it past ends it (every snapshot carries it, base64 where not text). */
export const JOURNAL_MAX_BYTES = 256 * 1024;

/** The checkpoint key of an agent: `<run id>/<agent id>`, each made safe for a ref name. */
export function checkpointKey(runId: string, agentId: string): string {
  const part = (text: string) => {
    const clean = text.replace(/[^A-Za-z0-9_-]/g, "_") || "_";
    return clean === text ? clean : `${clean}-${createHash("sha256").update(text).digest("hex").slice(0, 8)}`;
  };
  return `${part(runId)}/${part(agentId)}`;
}

/**
 * Saves the agent's files before its next turn (number `agent.turns`); `signal` calls it off.
 * When they are still the files of the commit its worktree was checked out at, and the workspace
 * can put them back from the commit's id alone (`restoreFilesOf`), nothing is saved under a ref:
 * the agent's `checkpointCommit` names the turn and the commit, in a snapshot handed over before
 * this returns, so before the turn's tools run. No ref keeps that commit from git's garbage
 * collection, and none is needed: it is the commit the agent's branch was created at, so the
 * branch reaches it (commits only ever go on top of it).
 */
export async function checkpointTurn(tree: AgentTree, agent: AgentState, workspace: Workspace, signal?: AbortSignal): Promise<void> {
  if (!isCheckpointable(workspace)) return;
  const turn = agent.turns ?? 0;
  const key = checkpointKey(tree.state.runId, agent.id);
  // A worktree checked out fresh and not written since holds its commit's files (HEAD still there).
  const pristine = tree.pristine.get(agent.id);
  const filesOf = pristine !== undefined && (await workspace.head()) === pristine ? pristine : undefined;
  const callerKeeps = filesOf !== undefined && typeof workspace.restoreFilesOf === "function";
  const saved = await workspace.checkpoint(key, `turn ${turn}`, { ...(signal ? { signal } : {}), ...(filesOf ? { filesOf } : {}), ...(callerKeeps ? { callerKeeps } : {}) });
  if (callerKeeps && saved.unsaved) {
    // A ref left under the key (a run with the same id) would supersede the commit: gone first.
    await workspace.dropCheckpoint(key);
    agent.checkpointCommit = { turn, commit: saved.id };
    await tree.snapshot();
  } else {
    // A ref saved after the commit supersedes it (see `restoreInterruptedTurn`); the commit goes
    // from the next snapshot.
    delete agent.checkpointCommit;
  }
  // Once saved, the turn's tools may write (and may fail half-way): the next checkpoint looks.
  tree.pristine.delete(agent.id);
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
  if (!checkpointed?.readOnly) forgetUnchangedFiles(agent);
  else if (agent.unchangedSince === undefined && checkpointed.saved) agent.unchangedSince = done;
  agent.turns = done + 1;
}

/**
 * Records a completed turn that wrote only through keen's file tools (`written`: the paths they
 * wrote), when a checkpoint holds the files it started from (`saved`: its own). The files join
 * the agent's journal as they are now; when they cannot (see the module's notes), the turn is
 * counted as one that may have written anything. The caller snapshots next.
 */
export async function countJournaledTurn(agent: AgentState, workspace: Workspace, written: readonly string[], saved: boolean): Promise<void> {
  const done = agent.turns ?? 0;
  const base = agent.unchangedSince ?? (saved ? done : undefined);
  // A file that cannot be read back (its permissions changed under keen) is one the journal cannot hold.
  const states = base === undefined ? null : await readFileStates(workspace, written).catch(() => null);
  const journal = states && joinJournal(agent.journal ?? [], states);
  if (base === undefined || !journal) {
    countTurn(agent, { readOnly: false, saved });
    return;
  }
  agent.unchangedSince = base;
  if (journal.length > 0) agent.journal = journal;
  agent.turns = done + 1;
}

/** `journal` with `states` written over it (one entry per path, the latest), or null past the bounds. */
function joinJournal(journal: readonly FileState[], states: readonly FileState[]): FileState[] | null {
  const byPath = new Map(journal.map((state) => [state.path, state]));
  for (const state of states) {
    byPath.delete(state.path); // The latest write goes last.
    byPath.set(state.path, state);
  }
  const joined = [...byPath.values()];
  const bytes = joined.reduce((sum, state) => sum + fileStateBytes(state), 0);
  return joined.length > JOURNAL_MAX_FILES || bytes > JOURNAL_MAX_BYTES ? null : joined;
}

/**
 * `workspace` with the paths given to its `writeFile` passed to `onWrite` (before the write, so a
 * write that fails half-way is still recorded); every other member is the workspace's own.
 */
function recordingWrites(workspace: Workspace, onWrite: (path: string) => void): Workspace {
  return new Proxy(workspace, {
    get(target, property) {
      if (property === "writeFile") {
        return (path: string, content: string) => {
          onWrite(path);
          return target.writeFile(path, content);
        };
      }
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}

/**
 * The checkpoints of one conversation that may write (`converse`): `save` runs as each turn
 * starts (with its model request) and saves nothing while `unchangedSince` names a checkpoint
 * that, with the journal, holds the files; `count` records the turn once its tools have run.
 * The conversation's tools get `workspace`, which notes the paths written through it.
 */
export function turnCheckpoints(
  tree: AgentTree,
  agent: AgentState,
  workspace: Workspace,
): { workspace: Workspace; save(signal: AbortSignal): Promise<void>; count(info: { readOnly: boolean; journaled: boolean }): Promise<void> } {
  let savedTurn: number | undefined;
  const written = new Set<string>();
  return {
    workspace: isCheckpointable(workspace) ? recordingWrites(workspace, (path) => written.add(path)) : workspace,
    async save(signal) {
      if (agent.unchangedSince !== undefined) return;
      const turn = agent.turns ?? 0;
      await checkpointTurn(tree, agent, workspace, signal);
      savedTurn = turn;
    },
    async count({ readOnly, journaled }) {
      const paths = [...written];
      written.clear();
      const saved = savedTurn === (agent.turns ?? 0);
      if (readOnly || !journaled || !isCheckpointable(workspace)) countTurn(agent, { readOnly, saved });
      else await countJournaledTurn(agent, workspace, paths, saved);
    },
  };
}

/**
 * Ends what `countTurn` carried over between turns: the next conversation's first turn saves a
 * checkpoint of its own (between conversations, merges and commits may change the files).
 */
export function forgetUnchangedFiles(agent: AgentState): void {
  delete agent.unchangedSince;
  delete agent.journal;
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
  // The agent's last checkpoint: its ref, saved after any commit the snapshot names (a ref left
  // from before is dropped as the commit is recorded), else that commit.
  const saved = await workspace.readCheckpoint(key);
  const kept = saved ? undefined : agent.checkpointCommit;
  const match = saved ? LABEL.exec(saved.label) : null;
  if (!match && !kept) return;
  const turn = kept ? kept.turn : Number(match![1]);
  const done = agent.turns ?? 0;
  // The checkpointed turn was saved as done: the files hold its effects, and nothing that may
  // write ran since, unless every turn since was read-only or journaled (then the checkpoint,
  // with the journal, is also the one of the turn to repeat, which may have written).
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
  if (kept && !workspace.restoreFilesOf) {
    skip(`The checkpoint of turn ${turn} is the files of commit ${kept.commit}, which this workspace cannot put back; the files are left as they are`);
    return;
  }
  // The checkpoint of the turn to repeat is the saved one plus the journal written since.
  const journal = turn < done ? (agent.journal ?? []) : [];
  const options = journal.length > 0 ? { journal } : undefined;
  const { changed } = kept ? await workspace.restoreFilesOf!(kept.commit, options) : await workspace.restoreCheckpoint(key, options);
  tree.emit({ type: "turn.restored", agentId: agent.id, branch: agent.branch, turn: done, result: "restored", files: changed });
}

/** The agents of a tree whose checkpoint this process has deleted (and that take no more turns). */
const dropped = new WeakMap<AgentTree, Set<string>>();

/** Deletes an agent's checkpoint once its work is committed. */
export async function dropTurnCheckpoint(tree: AgentTree, agent: AgentState, workspace: Workspace): Promise<void> {
  if (!isCheckpointable(workspace)) return;
  delete agent.checkpointCommit;
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
