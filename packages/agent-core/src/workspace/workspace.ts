/** Result of running a command in a workspace. */
export interface ExecResult {
  /** Exit code, or null when the process was killed by a signal. */
  exitCode: number | null;
  /** Combined stdout and stderr in arrival order, capped at `maxOutputBytes` (a marker says what was cut). */
  output: string;
  timedOut: boolean;
  aborted: boolean;
  /** True when the output cap cut part of the output. */
  truncated: boolean;
  durationMs: number;
}

export interface ExecOptions {
  /** Working directory relative to the workspace root. Defaults to the root. */
  cwd?: string;
  /** Kill the whole process tree after this many milliseconds. Default 120 000. */
  timeoutMs?: number;
  /** Keep at most this many bytes of output. Default 100 000. */
  maxOutputBytes?: number;
  env?: Record<string, string>;
  signal?: AbortSignal;
  /**
   * The command must not change the workspace: under a sandbox the checkout is mounted
   * read-only. A workspace that cannot guarantee this refuses the command (code
   * `read_only_unavailable`) rather than run it.
   */
  readOnly?: boolean;
}

export interface ListFilesOptions {
  /** A glob relative to the root (`*`, `**`, `?`, `[…]`, `{a,b}`), e.g. `src/**\/*.ts`; matched in linear time. Default: every file. */
  pattern?: string;
  /** At most this many paths. Default 1000. */
  limit?: number;
}

/** Why `commit` (or `fork` with `includeUncommitted`) left a file out. */
export type SkippedReason = "credential" | "too_large" | "temp_file" | "not_regular" | "invalid_name";

/** A file keen did not commit, and why. */
export interface SkippedFile {
  path: string;
  reason: SkippedReason;
  detail?: string;
}

/** What `commit` did: the new commit (null when nothing was staged) and the files it left out. */
export interface CommitResult {
  sha: string | null;
  skipped: SkippedFile[];
}

export interface ReadFileOptions {
  /** Refuse files larger than this many bytes (code `file_too_large`). Default 10 MiB. */
  maxBytes?: number;
  /** Abandons the read (code `aborted`). */
  signal?: AbortSignal;
}

export interface CommitOptions {
  author?: { name: string; email: string };
  /** Commit even when nothing changed. Default false. */
  allowEmpty?: boolean;
}

/**
 * One checkout an agent works in. Every path argument is relative to `root` and is refused
 * with `PathOutsideWorkspaceError` when it would resolve outside it (`..`, absolute paths,
 * or symlinks that lead out).
 *
 * @example
 * const ws = await LocalWorkspace.open("/path/to/repo");
 * await ws.writeFile("src/hello.ts", "export const hi = 1;\n");
 * const { output } = await ws.exec("git status --short");
 */
export interface Workspace {
  /** Absolute, real path of the checkout. */
  readonly root: string;
  /**
   * For a sparse worktree (`fork` with `paths`): the only files and folders it holds. Reading,
   * writing or asking for anything else is refused with code `path_not_checked_out`, and
   * `listFiles` lists only what lies inside them. Undefined for a full checkout.
   */
  readonly paths?: readonly string[];
  /** Absolute path for `path`, after checking it stays inside the root. */
  resolvePath(path: string): Promise<string>;
  /**
   * Reads a regular file as UTF-8. Refuses anything else (FIFOs, sockets, devices: code
   * `not_regular_file`) by checking the opened descriptor, and files over `maxBytes` before
   * loading them (code `file_too_large`).
   */
  readFile(path: string, options?: ReadFileOptions): Promise<string>;
  /** Writes atomically (temporary file + rename), creating parent folders. */
  writeFile(path: string, content: string): Promise<void>;
  exists(path: string): Promise<boolean>;
  /** Files (not folders) relative to the root, sorted, honouring .gitignore; never lists `.git`. */
  listFiles(options?: ListFilesOptions): Promise<string[]>;
  /** Runs a shell command; never throws for a non-zero exit, only for a bad `cwd`. */
  exec(command: string, options?: ExecOptions): Promise<ExecResult>;
  /** Name of the checked-out branch. */
  currentBranch(): Promise<string>;
  /** Commit id of HEAD. */
  head(): Promise<string>;
  /**
   * Stages every change and commits it, except what keen never commits: credential-looking files
   * (`.env*`, `*.pem`, `id_rsa*`, `*.key`, key-shaped content), files over the workspace's size
   * limit, keen's atomic-write temp files (`.keen-*.tmp`) and non-regular files. Those stay in the
   * checkout, uncommitted, and are listed in `skipped`. `sha` is the new commit, or null when
   * nothing was left to commit. While a merge has unmerged paths it refuses (`merge_unresolved`):
   * staging them would record their conflict markers as a resolution.
   */
  commit(message: string, options?: CommitOptions): Promise<CommitResult>;
}

/** Outcome of merging a branch into a workspace's current branch. */
export type MergeResult =
  | { status: "merged"; sha: string }
  /** The merge stopped with conflicts; the workspace is mid-merge until `commitMerge` or `abortMerge`. */
  | { status: "conflict"; files: string[] };

export interface ForkOptions {
  /** Commit-ish to create the branch at. Default: this workspace's HEAD. */
  from?: string;
  /**
   * Resume: attach to the existing branch (and its worktree when this process or a dead one owns
   * it; a live process's worktree is refused with code `worktree_in_use`). Without it, a branch
   * that exists, or a name that clashes with an existing ref as file/folder, is refused with code
   * `branch_exists`.
   */
  reattach?: boolean;
  /**
   * Copy this checkout's tracked modifications and untracked, non-ignored files into the new
   * worktree as a first commit, leaving this checkout's working tree, index and stash as they
   * are. Credential-looking files are left out. What was included is in `lastForkReport`.
   */
  includeUncommitted?: boolean;
  /**
   * Files or folders (relative to the root) the new worktree holds: only these are checked out,
   * as a sparse checkout of the worktree alone (the repository's config is left as it is). The
   * branch and every commit and merge still cover the whole tree. With `reattach`, pass the
   * paths the agent was forked with: a worktree made again (a recovery pass removed it) is then
   * sparse again, and an existing one keeps being treated as sparse; without them it comes back
   * as a full checkout.
   */
  paths?: string[];
}

/** What `fork` with `includeUncommitted` carried over, on the forked workspace as `lastForkReport`. */
export interface ForkReport {
  included: string[];
  skipped: SkippedFile[];
}

/**
 * A workspace that can host child agents: git worktrees for branches, merges and rollback.
 * Optional capabilities of a `Workspace`; the SUMMON phase needs them.
 */
export interface ForkableWorkspace extends Workspace {
  /**
   * Creates `branch` fresh at this workspace's HEAD (or `options.from`) and a worktree for it;
   * returns a workspace on that worktree. An existing branch is only used with `reattach`.
   * Never changes this checkout's working tree, index, stash or current branch.
   */
  fork(branch: string, options?: ForkOptions): Promise<ForkableWorkspace>;
  /** For a workspace made by `fork` with `includeUncommitted`: what was carried over. Otherwise undefined. */
  readonly lastForkReport?: ForkReport;
  /** Merges `branch` into the current branch with `--no-ff` and `message`. */
  merge(branch: string, message: string): Promise<MergeResult>;
  /**
   * Merges several branches in order, each as `merge` would (a `--no-ff` commit with its message;
   * a branch already contained changes nothing), with the working tree and index brought up to
   * date once, at the end. Stops before the first branch that would conflict, and after a merge
   * that changes a `.gitattributes` file (git takes a merge's attributes from the worktree), and
   * returns the merges made, in order: the caller merges the next one with `merge`, which leaves
   * a conflict in the worktree. Optional: with it, children that finish together are merged
   * without a checkout each. When the worktree cannot take the result (a file written there since
   * the last commit is in the way, staged changes), nothing changes and it throws `merge_failed`.
   */
  mergeMany?(merges: ReadonlyArray<{ branch: string; message: string }>): Promise<Array<{ branch: string; sha: string }>>;
  /**
   * Concludes a merge whose conflicts were resolved; returns the merge commit. Resolutions are
   * read without following symlinks or opening non-regular files; a conflicted path that is
   * neither a regular file nor a symlink, or still has markers, is refused (`merge_unresolved`).
   */
  commitMerge(message: string): Promise<string>;
  /** Abandons a merge in progress (no-op when none is). */
  abortMerge(): Promise<void>;
  /** Resets the current branch and the work tree to `sha`, removing untracked files. */
  resetTo(sha: string): Promise<void>;
  /** Files with unresolved conflicts, relative to the root. */
  conflictedFiles(): Promise<string[]>;
  /** Removes this workspace's worktree (never the main checkout); branches are kept. */
  dispose(): Promise<void>;
  /** Removes worktrees kept after `dispose` for reuse by later forks, when the workspace keeps any. */
  releaseWorktrees?(): Promise<void>;
  /**
   * The files of `commit` (an id or a name of one), sorted, as `listFiles` lists a fresh fork
   * from it, read without a checkout. Optional: with it, a run lists its start commit while its
   * worktree is being made instead of after. An unknown commit is `invalid_ref`.
   */
  listCommitFiles?(commit: string): Promise<string[]>;
}

export function isForkable(workspace: Workspace): workspace is ForkableWorkspace {
  const candidate = workspace as Partial<ForkableWorkspace>;
  return typeof candidate.fork === "function" && typeof candidate.merge === "function" && typeof candidate.resetTo === "function";
}

/** A saved state of a workspace's files: see `CheckpointableWorkspace`. */
export interface WorkspaceCheckpoint {
  /** Identifies the saved state (for `LocalWorkspace`, a commit id). */
  id: string;
  /** The text given to `checkpoint`. */
  label: string;
  /**
   * True when nothing was saved under the key (`checkpoint` with `filesOf` and `callerKeeps`):
   * the checkpoint is the files of commit `id`, which the caller keeps and restores with
   * `restoreFilesOf`. `readCheckpoint` does not know it.
   */
  unsaved?: boolean;
}

/**
 * One file as a turn left it: its bytes (`text` when they are valid UTF-8, else `base64`) and
 * permission bits, or, with no `mode`, its absence. `path` is relative to the root.
 */
export interface FileState {
  path: string;
  mode?: number;
  text?: string;
  base64?: string;
}

/** What `restoreCheckpoint` changed: paths written back or removed, relative to the root. */
export interface RestoreReport {
  changed: string[];
}

export interface CheckpointOptions {
  /** Once it fires, the checkpoint stops before its next step (code `aborted`). */
  signal?: AbortSignal;
  /**
   * A commit (full id) whose files the caller knows the work tree holds exactly: checked out
   * fresh, and nothing written since. The checkpoint is then that commit's tree, saved without
   * looking at the files. An implementation may ignore it and save the files as usual.
   */
  filesOf?: string;
  /**
   * With `filesOf`: the caller keeps the commit id itself and, to put the files back, calls
   * `restoreFilesOf` with it. An implementation that has `restoreFilesOf` and can restore this
   * checkout's files from the commit alone may then save nothing (no key is written, any earlier
   * checkpoint under it stays) and answer `unsaved: true`; otherwise it saves as usual.
   */
  callerKeeps?: boolean;
}

/**
 * A workspace that can save the state of its files and put them back exactly, so that a turn cut
 * short by a crash can be repeated from where it started. Optional capability of a `Workspace`;
 * resume uses it when it is there.
 */
export interface CheckpointableWorkspace extends Workspace {
  /**
   * Saves the content of every tracked and untracked, non-ignored file under `key` (replacing an
   * earlier checkpoint of that key), with `label` kept beside it. Leaves out what `commit` would
   * (credentials, oversized files, keen's `.keen-*.tmp` files, non-regular files), never changes
   * the checkout's files, index, HEAD or branch, and makes no commit on any branch. Once
   * `options.signal` fires it stops before its next step and rejects with code `aborted`; the
   * checkpoint under `key` is then the earlier one, unless the new one was already saved.
   */
  checkpoint(key: string, label: string, options?: CheckpointOptions): Promise<WorkspaceCheckpoint>;
  /** The checkpoint saved under `key`, or null when there is none. */
  readCheckpoint(key: string): Promise<WorkspaceCheckpoint | null>;
  /**
   * Makes the files exactly what they were at `checkpoint(key)`: files added since are removed,
   * changed and deleted ones written back; files a checkpoint leaves out stay as they are. A
   * checkpoint of a sparse worktree (`fork` with `paths`) never deletes a file outside those
   * paths, whatever checkout it is restored into (one made again as a full checkout). HEAD,
   * branch and the commits are not changed. Refused with code `restore_refused` in a checkout
   * keen did not create (a user's), and with `checkpoint_not_found` when `key` has none. With
   * `journal`, then makes each of its paths hold what its state says (written after the
   * checkpoint by keen's own file tools), so the files are those of the checkpoint plus the journal.
   */
  restoreCheckpoint(key: string, options?: { journal?: readonly FileState[] }): Promise<RestoreReport>;
  /**
   * `restoreCheckpoint` for a checkpoint that `checkpoint` answered `unsaved` (the files of
   * `commit`): the same result, the same refusal (`restore_refused`) in a checkout keen did not
   * create. Optional: an implementation without it never answers `unsaved`.
   */
  restoreFilesOf?(commit: string, options?: { journal?: readonly FileState[] }): Promise<RestoreReport>;
  /** True when `restoreCheckpoint` may change this checkout's files (it is one keen created). */
  readonly restorable: boolean;
  /** Deletes the checkpoint saved under `key`; no-op when there is none. */
  dropCheckpoint(key: string): Promise<void>;
}

export function isCheckpointable(workspace: Workspace): workspace is CheckpointableWorkspace {
  const candidate = workspace as Partial<CheckpointableWorkspace>;
  return typeof candidate.checkpoint === "function" && typeof candidate.restoreCheckpoint === "function" && typeof candidate.dropCheckpoint === "function";
}
