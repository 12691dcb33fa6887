import { copyFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AbortedError, KeenError } from "../errors.js";
import { filesBySkipWorktree, isInsidePaths, skipOutsidePaths, stageChanges } from "./commit-filter.js";
import { git, gitRaw, nulSeparated, oneLine, type GitTarget } from "./git.js";
import { refExistsInFiles } from "./refs.js";
import type { RestoreReport, WorkspaceCheckpoint } from "./workspace.js";

/** Where checkpoints live: private refs, never branches, shared by every worktree of a repository. */
export const CHECKPOINT_REF_PREFIX = "refs/keen/checkpoints/";

/** Author and committer of checkpoint commits (they are private and never on a branch). */
const CHECKPOINT_IDENTITY = {
  GIT_AUTHOR_NAME: "keen",
  GIT_AUTHOR_EMAIL: "keen@localhost",
  GIT_COMMITTER_NAME: "keen",
  GIT_COMMITTER_EMAIL: "keen@localhost",
};

const KEY_PART = /^[A-Za-z0-9_-][A-Za-z0-9._-]*$/;

/**
 * The ref of a checkpoint key: one or more `/`-separated parts of letters, digits, `.`, `_` and
 * `-` (no part starts with a dot, none ends with `.lock`, no `..`). Anything else is refused
 * with code `invalid_checkpoint_key`.
 */
export function checkpointRef(key: string): string {
  const parts = typeof key === "string" ? key.split("/") : [];
  const valid = parts.length > 0 && parts.every((part) => KEY_PART.test(part) && !part.endsWith(".lock") && !part.includes(".."));
  if (!valid) throw new KeenError("invalid_checkpoint_key", `"${String(key)}" is not a valid checkpoint key`);
  return `${CHECKPOINT_REF_PREFIX}${key}`;
}

export interface CheckpointTarget extends GitTarget {
  /** Files over this size are left out, as `commit` leaves them out. */
  maxFileBytes: number;
  /** A sparse worktree's paths: saved with the checkpoint as its scope (see `restoreCheckpoint`). */
  paths?: readonly string[];
}

/** Trailer lines of a checkpoint's message naming its scope, one path a line. */
const SCOPE_TRAILER = "keen-checkpoint-path: ";

/** The label and scope written in a checkpoint commit's message. */
function parseMessage(message: string): { label: string; paths?: string[] } {
  const lines = message.replace(/\n$/, "").split("\n");
  const paths: string[] = [];
  while (lines.length > 0 && lines[lines.length - 1]!.startsWith(SCOPE_TRAILER)) paths.unshift(lines.pop()!.slice(SCOPE_TRAILER.length));
  if (paths.length > 0 && lines[lines.length - 1] === "") lines.pop();
  return { label: lines.join("\n"), ...(paths.length > 0 ? { paths } : {}) };
}

/**
 * Runs `task` with a private temporary index file that starts as a copy of the checkout's own
 * index (its stat data spares rehashing unchanged files) or, when that cannot be read or the
 * task fails on it (a merge's conflicts in it), as HEAD's tree. The checkout's own index is only read.
 */
async function withWorktreeIndex<T>(target: CheckpointTarget, task: (env: Record<string, string>) => Promise<T>, signal?: AbortSignal): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "keen-checkpoint-"));
  const env = { GIT_INDEX_FILE: join(dir, "index") };
  const fromHead = async () => {
    await rm(env.GIT_INDEX_FILE, { force: true });
    const head = await gitRaw(target, ["rev-parse", "-q", "--verify", "HEAD^{tree}"]);
    await git(target, head.exitCode === 0 ? ["read-tree", oneLine(String(head.stdout))] : ["read-tree", "--empty"], { env });
    // In a sparse worktree, the files outside its paths are not checked out: marked as the
    // worktree's own index marks them, so their absence is not staged as deletions.
    if (target.paths && target.paths.length > 0) await skipOutsidePaths(target, env, target.paths);
    return task(env);
  };
  try {
    const copied = await copyFile(join(target.gitDir, "index"), env.GIT_INDEX_FILE).then(
      () => true,
      () => false,
    );
    if (!copied) return await fromHead();
    try {
      return await task(env);
    } catch (caught) {
      if (signal?.aborted) throw caught;
      return await fromHead();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Stages the work tree into the temporary index (what `commit` would take) and returns its tree. */
async function stageTree(target: CheckpointTarget, env: Record<string, string>, signal?: AbortSignal): Promise<string> {
  await stageChanges(target, { maxFileBytes: target.maxFileBytes, env, ...(signal ? { signal } : {}) });
  stopIfAborted(signal);
  return oneLine(await git(target, ["write-tree"], { env }));
}

function stopIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortedError("The checkpoint was called off");
}

/**
 * Saves the work tree's files as a commit under `refs/keen/checkpoints/<key>` (no parent,
 * message: `label`), through a temporary index: the checkout's files, index and HEAD stay as
 * they are. Once `signal` fires, stops before its next git step (never inside one) with code
 * `aborted`, and the ref keeps the earlier checkpoint unless it was already moved. `filesOf`: a
 * commit whose files the work tree is known to hold exactly; its tree is saved without staging.
 */
export async function saveCheckpoint(target: CheckpointTarget, key: string, label: string, signal?: AbortSignal, filesOf?: string): Promise<WorkspaceCheckpoint> {
  const ref = checkpointRef(key);
  stopIfAborted(signal);
  const tree = filesOf !== undefined ? `${filesOf}^{tree}` : await withWorktreeIndex(target, (env) => stageTree(target, env, signal), signal);
  stopIfAborted(signal);
  // The ref update is asked for with the commit and gets its command once the commit exists.
  // Started by `spawn`, its git process waits for that command on stdin, so it is up by then;
  // through the git launcher (see git.ts) it starts once the command is known, which costs less.
  // A checkpoint called off before this point (a read-only turn) has started no process for it;
  // with no command the update ends without changing anything.
  let command!: (text: string) => void;
  const updating = git(target, ["update-ref", "--stdin"], { input: new Promise<string>((resolve) => (command = resolve)) });
  updating.catch(() => {}); // Awaited below.
  try {
    // Sparse paths hold no newline (fork refuses them), so each is one trailer line.
    const scope = target.paths && target.paths.length > 0 ? `\n\n${target.paths.map((path) => `${SCOPE_TRAILER}${path}\n`).join("")}` : "";
    const id = oneLine(await git(target, ["commit-tree", tree, "-F", "-"], { env: CHECKPOINT_IDENTITY, input: label + scope }));
    stopIfAborted(signal);
    command(`update ${ref} ${id}\n`);
    await updating;
    return { id, label };
  } finally {
    command("");
    await updating.catch(() => {});
  }
}

/** The checkpoint under `key`, or null. */
export async function readCheckpoint(target: GitTarget, key: string): Promise<WorkspaceCheckpoint | null> {
  const saved = await readScopedCheckpoint(target, key);
  return saved ? { id: saved.id, label: saved.label } : null;
}

async function readScopedCheckpoint(target: GitTarget, key: string): Promise<(WorkspaceCheckpoint & { paths?: string[] }) | null> {
  const found = await gitRaw(target, ["rev-parse", "-q", "--verify", `${checkpointRef(key)}^{commit}`]);
  if (found.exitCode !== 0) return null;
  const id = oneLine(String(found.stdout));
  const raw = await git(target, ["cat-file", "commit", id]);
  const split = raw.indexOf("\n\n");
  return { id, ...parseMessage(split === -1 ? "" : raw.slice(split + 2)) };
}

/**
 * Makes the work tree's files those of the checkpoint under `key`: a two-tree switch from the
 * work tree as it is now (staged into a temporary index) to the checkpoint's tree, so files added
 * since are removed (with folders left empty) and changed or deleted ones are written back.
 * Files neither tree holds (credentials, temp files, ignored files) are not touched. A
 * checkpoint of a sparse worktree removes no file outside its recorded paths (`keepOutsideScope`).
 */
export async function restoreCheckpoint(target: CheckpointTarget, key: string): Promise<RestoreReport> {
  const saved = await readScopedCheckpoint(target, key);
  if (!saved) throw new KeenError("checkpoint_not_found", `There is no checkpoint "${key}"`);
  return restoreTree(target, saved.id, saved.paths);
}

/**
 * `restoreCheckpoint` to the files of `commit`, as a checkpoint saved with `filesOf: commit`
 * would hold them. In a sparse worktree (`target.paths`), no file outside its paths is removed.
 */
export async function restoreFilesOf(target: CheckpointTarget, commit: string): Promise<RestoreReport> {
  return restoreTree(target, commit, target.paths && target.paths.length > 0 ? target.paths : undefined);
}

/**
 * Switches the work tree's files to the tree of commit `id` (see `restoreCheckpoint`); `paths`: a
 * sparse checkpoint's scope. In a sparse worktree (`target.sparse`) the switch is made without its
 * patterns: applied to the temporary index, they would take every file outside them that the work
 * tree holds (one a command wrote there) for one not to check out, and delete it. The files it does
 * not hold stay as they are instead (see `goalTree`), so none is written out either.
 */
async function restoreTree(target: CheckpointTarget, id: string, paths?: readonly string[]): Promise<RestoreReport> {
  const checkpointTree = oneLine(await git(target, ["rev-parse", `${id}^{tree}`]));
  const sparse = target.sparse === true;
  return withWorktreeIndex(target, async (env) => {
    const now = await stageTree(target, env);
    if (now === checkpointTree) return { changed: [] };
    const wanted = paths || sparse ? await goalTree(target, env, now, checkpointTree, paths) : checkpointTree;
    if (now === wanted) return { changed: [] };
    const changed = nulSeparated(await git(target, ["diff-tree", "-r", "-z", "--name-only", "--no-renames", now, wanted]));
    await git(sparse ? { gitDir: target.gitDir, workTree: target.workTree } : target, ["read-tree", "--reset", "-u", now, wanted], { env });
    return { changed };
  });
}

/**
 * The tree to switch to from `now` (the work tree staged): the checkpoint's, except for two kinds
 * of file, which keep the entry they have in `now` so the switch leaves them as they are.
 * - Outside a sparse checkpoint's `paths`, a file the work tree holds and the checkpoint lacks: the
 *   checkpoint saw only the files inside its paths, and a file outside them may simply not have
 *   been checked out there (or not been in the index it was staged from). So a restore never
 *   deletes a file outside the scope.
 * - In a sparse worktree, a file outside its patterns that it does not hold (skip-worktree in the
 *   index): not checked out, it is neither written out nor taken for a deletion.
 */
async function goalTree(target: CheckpointTarget, env: Record<string, string>, now: string, checkpointTree: string, paths: readonly string[] | undefined): Promise<string> {
  const status = nulSeparated(await git(target, ["diff-tree", "-r", "-z", "--name-status", "--no-renames", now, checkpointTree]));
  const notHeld = target.sparse ? filesBySkipWorktree(await git(target, ["ls-files", "-t", "-z"], { env }), true) : new Set<string>();
  const keep = new Set<string>();
  for (let i = 0; i + 1 < status.length; i += 2) {
    const [letter, file] = [status[i]!, status[i + 1]!];
    if (notHeld.has(file) || (letter === "D" && paths && !isInsidePaths(file, paths))) keep.add(file);
  }
  if (keep.size === 0) return checkpointTree;
  const entries = (await git(target, ["ls-tree", "-r", "-z", "--full-tree", now]))
    .split("\0")
    .filter((entry) => entry !== "" && keep.has(entry.slice(entry.indexOf("\t") + 1)));
  const goalEnv = { GIT_INDEX_FILE: `${env.GIT_INDEX_FILE}.goal` };
  try {
    await git(target, ["read-tree", checkpointTree], { env: goalEnv });
    await git(target, ["update-index", "-z", "--index-info"], { env: goalEnv, input: entries.map((entry) => `${entry}\0`).join("") });
    return oneLine(await git(target, ["write-tree"], { env: goalEnv }));
  } finally {
    await rm(goalEnv.GIT_INDEX_FILE, { force: true });
  }
}

/**
 * Deletes the checkpoint under `key` (no-op when there is none). With `commonDir`, a ref its
 * files show does not exist (no loose ref, no line in `packed-refs`) is left to nothing: no git
 * process is started for it.
 */
export async function dropCheckpoint(target: GitTarget, key: string, commonDir?: string): Promise<void> {
  const ref = checkpointRef(key);
  if (commonDir !== undefined && (await refExistsInFiles(commonDir, ref)) === false) return;
  await git(target, ["update-ref", "-d", ref]);
}
