import { randomBytes } from "node:crypto";
import { existsSync, type Stats } from "node:fs";
import { lstat, mkdir, mkdtemp, readFile, readlink, realpath, rename, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, isAbsolute, join, normalize, relative, resolve, sep } from "node:path";
import { AbortedError, KeenError, PathOutsideWorkspaceError } from "../errors.js";
import { addWorktree } from "./add-worktree.js";
import { commitWriter } from "./commit-object.js";
import { checkpointRef, dropCheckpoint, readCheckpoint, restoreCheckpoint, restoreFilesOf, saveCheckpoint, type CheckpointTarget } from "./checkpoint.js";
import { localCommandRunner, type CommandRunner } from "./command-runner.js";
import { DEFAULT_MAX_FILE_BYTES, filesBySkipWorktree, isCredentialName, skipOutsidePaths, stageChanges } from "./commit-filter.js";
import { compileGlob } from "./glob.js";
import { hasGitDirComponent } from "./git-dir-name.js";
import { indexEntryCount, indexHasGitlink } from "./index-file.js";
import { git, gitBytes, gitDiscover, gitFailure, gitRaw, nulSeparated, nulSeparatedBytes, nulSeparatedNames, oneLine, type GitTarget } from "./git.js";
import { sandboxGitConfig } from "./sandbox-git-config.js";
import { spreadSubfolders } from "./spread-folders.js";
import { isInside } from "./is-inside.js";
import { withRepoLock } from "./repo-lock.js";
import { readHeadFromFiles } from "./read-head.js";
import { removeWorktreeInProcess, type KeenWorktree } from "./remove-worktree.js";
import { isLooseCommit, isValidBranchName, OBJECT_ID, refsAroundFromFiles, type RefsAround } from "./refs.js";
import { readRegularFile } from "./safe-read.js";
import { assertSandboxAvailable, sandboxRunner, type SandboxOptions } from "./sandbox-runner.js";
import {
  isLeaseLive,
  ownLease,
  parseLease,
  parseWorktreeList,
  recoverWorktrees,
  removeTempFiles,
  salvageRef,
  worktreeGitDir,
  type RecoveryReport,
} from "./worktree-recovery.js";
import { readFileStates, sameFileState, writeFileStates } from "./write-journal.js";
import type {
  CheckpointableWorkspace,
  CheckpointOptions,
  CommitOptions,
  CommitResult,
  ExecOptions,
  ExecResult,
  FileState,
  ForkableWorkspace,
  ForkOptions,
  ForkReport,
  ListFilesOptions,
  MergeResult,
  ReadFileOptions,
  RestoreReport,
  WorkspaceCheckpoint,
} from "./workspace.js";

export interface LocalWorkspaceOptions {
  /**
   * Run `exec` commands under bubblewrap (`true`, the default, or options for `sandboxRunner`).
   * When bwrap is missing or unusable, `open` throws `SandboxUnavailableError`; pass `false` to
   * run commands directly on the host instead. Forks inherit the setting, each with its own
   * worktree as the only writable folder.
   */
  sandbox?: boolean | SandboxOptions;
  /** Runs `exec` commands; when given it wins over `sandbox`. */
  commandRunner?: CommandRunner;
  /**
   * The recovery pass `open` runs on a main checkout: worktrees of dead keen processes are
   * removed (their uncommitted work kept under `refs/keen/salvage/<branch>` and restored by the
   * next `fork(branch, { reattach: true })`), keen's atomic-write temp files in them are deleted,
   * and git lock files are deleted when a scan of /proc shows no git process working in the
   * repository (their writer is provably dead), once older than `staleLockMs` (default 0: at
   * once). Where /proc cannot be read, locks are left alone. `false` skips the pass.
   */
  recovery?: false | { staleLockMs?: number };
  /** Author and committer when the repository has no identity configured. */
  defaultIdentity?: { name: string; email: string };
  /** Where child worktrees go. Default: `<git dir>/keen/worktrees`. */
  worktreesDir?: string;
  /** `commit` leaves files larger than this out (reported in `skipped`). Default 5 MB. */
  maxFileBytes?: number;
  /**
   * Keep the worktree of a disposed fork for the next `fork` instead of deleting its files (off by
   * default). `dispose` then removes its untracked and ignored files (`git clean -ffdx`), detaches
   * its HEAD (the branch is kept and held by no worktree) and moves it aside under
   * `<worktreesDir>/.parked/`; the next full fork renames it into place and switches it to the new
   * branch with `git checkout -f`, which writes only the files that differ. At most four are
   * kept per repository; they stay registered and locked with this process's lease, and are
   * removed by `releaseWorktrees()`, after 30 s without reuse, or by the recovery pass of a later
   * `open` once this process is gone. A worktree whose `.git` file changed, that is mid-merge,
   * sparse or has submodules (clean never empties their folders) is removed as before.
   */
  reuseWorktrees?: boolean;
}

const NUL = Buffer.from([0]);
/** `git status --porcelain` codes of unmerged paths. */
const UNMERGED = new Set(["DD", "AU", "UD", "UA", "DU", "AA", "UU"]);
const CONFLICT_MARKER = /^(<{7}|>{7}|={7})( |$)/m;
const DEFAULT_IDENTITY = { name: "keen", email: "keen@localhost" };
const DEFAULT_TIMEOUT_MS = 120_000;
const DEFAULT_OUTPUT_BYTES = 100_000;
const DEFAULT_STALE_LOCK_MS = 0;
const DEFAULT_READ_BYTES = 10 * 1024 * 1024;
/** Dangling links followed one after another when judging a path (the kernel's own limit is 40). */
const MAX_LINKS = 40;
/** Longest conflicted file `commitMerge` inspects for markers. */
const MAX_MERGE_FILE_BYTES = 50 * 1024 * 1024;

/** Per checkout (git dir): git writes of this process, one at a time. */
const checkoutQueues = new Map<string, Promise<unknown>>();

/**
 * Files a checkout holds (by its index) from which a fork's worktree folder is spread to a block
 * group of its own (`spreadSubfolders`): below it, the `chattr` process costs more than the
 * file system's lookups it spares.
 */
const SPREAD_MIN_FILES = 100;

/** Most disposed worktrees kept for reuse per repository (`reuseWorktrees`). */
const MAX_PARKED = 4;
/** A kept worktree not reused for this long is removed. */
const PARKED_IDLE_MS = 30_000;
/** Where kept worktrees wait, below the worktrees folder (no branch name starts with a dot). */
const PARKED_DIR = ".parked";
/** Files in a worktree's git dir that mean an operation is under way there: such a worktree is never kept. */
const IN_PROGRESS = ["MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD", "BISECT_LOG", "rebase-merge", "rebase-apply", "index.lock", join("info", "sparse-checkout")];

/** A disposed fork's worktree kept for reuse. */
interface ParkedWorktree {
  root: string;
  gitDir: string;
  /** Its `.git` file as git wrote it. */
  dotGit: string;
}

/** Kept worktrees per repository and worktrees folder. */
const parkedPools = new Map<string, { trees: ParkedWorktree[]; timer?: NodeJS.Timeout }>();

/** The deepest existing part of a checked path, with its `lstat`. */
interface Found {
  path: string;
  info: Stats;
}

/**
 * A workspace over a local git checkout, and the worktrees forked from it for child agents.
 *
 * @example
 * const ws = await LocalWorkspace.open("/path/to/repo");
 * const child = await ws.fork("summon-A");   // a worktree on a new branch
 * await child.writeFile("notes.md", "hi\n");
 * await child.commit("Add notes");
 * await ws.merge("summon-A", "Merge summon-A");
 */
export class LocalWorkspace implements ForkableWorkspace, CheckpointableWorkspace {
  private recovery: RecoveryReport = { removedWorktrees: [], salvagedBranches: [], removedLocks: [] };
  private forkReport: ForkReport | undefined;
  private sparsePaths: readonly string[] | undefined;
  /** A fork's `.git` file as git wrote it when the worktree was made; only such a worktree is kept for reuse. */
  private dotGit: string | undefined;
  /** Set once `dispose` ran; a kept worktree may then belong to another fork, so this one refuses further use. */
  private disposed = false;

  private constructor(
    readonly root: string,
    private readonly commonDir: string,
    /** This checkout's own git dir, found from the common dir (never from the agent-writable `.git` file). */
    private readonly gitDir: string,
    private readonly options: LocalWorkspaceOptions,
    private readonly isFork: boolean,
    private readonly runner: CommandRunner,
    /** State a workspace shares with its forks. */
    private readonly shared: SharedState = {},
  ) {}

  /** For a workspace made by `fork` with `includeUncommitted`: what was carried over into its first commit. */
  get lastForkReport(): ForkReport | undefined {
    return this.forkReport;
  }

  private get target(): GitTarget {
    this.assertLive();
    return { gitDir: this.gitDir, workTree: this.root, ...(this.sparsePaths ? { sparse: true } : {}) };
  }

  /** Refuses a fork used after `dispose` (`workspace_disposed`): its git dir may serve another fork by now. */
  private assertLive(): void {
    if (this.disposed) throw new KeenError("workspace_disposed", `The worktree of ${this.root} was disposed; fork again to work on its branch`);
  }

  /** For a sparse worktree (`fork` with `paths`): the files and folders it holds. */
  get paths(): readonly string[] | undefined {
    return this.sparsePaths;
  }

  /**
   * In a sparse worktree, refuses a path outside its paths (`path_not_checked_out`); folders on
   * the way to one pass when `ancestors` is set. A full checkout takes every path.
   */
  private assertCheckedOut(path: string, full: string, ancestors: boolean): void {
    if (!this.sparsePaths) return;
    const rel = relative(this.root, full).split(sep).join("/");
    const inside = this.sparsePaths.some((p) => rel === p || rel.startsWith(`${p}/`) || (ancestors && (rel === "" || p.startsWith(`${rel}/`))));
    if (!inside) {
      throw new KeenError(
        "path_not_checked_out",
        `${path} is outside this agent's paths (${this.sparsePaths.join(", ")}): its worktree holds only those, so it cannot read or write anything else. Report in your summary what needs changing there.`,
      );
    }
  }

  /** The repository's common git dir (real path): where its objects, refs and `keen/` folder are, shared by all its worktrees. */
  get gitCommonDir(): string {
    return this.commonDir;
  }

  /** What the recovery pass of `open` cleaned up (empty for forks and when it was skipped). */
  get recovered(): RecoveryReport {
    return this.recovery;
  }

  /** True when commands run under the bubblewrap sandbox. */
  get sandboxed(): boolean {
    return this.options.commandRunner === undefined && this.options.sandbox !== false;
  }

  /**
   * Opens a git work tree; refuses a missing folder or one that is not a git repository, and
   * (unless `sandbox: false` or a `commandRunner` is given) a machine where bubblewrap cannot run.
   */
  static async open(dir: string, options: LocalWorkspaceOptions = {}): Promise<LocalWorkspace> {
    const absolute = resolve(dir);
    let info;
    try {
      info = await stat(absolute);
    } catch {
      throw new KeenError("workspace_not_found", `Workspace folder ${absolute} does not exist`);
    }
    if (!info.isDirectory()) throw new KeenError("workspace_not_found", `${absolute} is not a folder`);
    let runner = options.commandRunner;
    let sandboxCheck: Promise<void> | undefined;
    if (!runner && options.sandbox !== false) {
      const sandbox = typeof options.sandbox === "object" ? options.sandbox : {};
      runner = sandboxRunner(sandbox);
      // Checked while git answers below.
      sandboxCheck = assertSandboxAvailable(sandbox.bwrapPath ? { bwrapPath: sandbox.bwrapPath } : {});
      sandboxCheck.catch(() => {});
    }
    const probe = async (...flags: string[]) => {
      const result = await gitDiscover(absolute, ["rev-parse", "--path-format=absolute", ...flags]);
      if (result.exitCode !== 0) throw new KeenError("not_a_git_repository", `${absolute} is not a git repository (run git init first)`);
      return result.stdout;
    };
    // The three paths in one call; a path holding a newline makes the lines ambiguous, and then
    // each is asked for alone (one value per call, only the final newline removed).
    const together = (await probe("--show-toplevel", "--git-common-dir", "--git-dir")).split("\n");
    const paths: string[] =
      together.length === 4 && together[3] === ""
        ? together.slice(0, 3)
        : await Promise.all(["--show-toplevel", "--git-common-dir", "--git-dir"].map(async (flag) => oneLine(await probe(flag))));
    const [root, commonDir, probedGitDir] = (await Promise.all(paths.map((path) => realpath(path)))) as [string, string, string];
    // A linked worktree's own git dir is looked up in the common dir, which only git writes.
    const gitDir = probedGitDir === commonDir ? commonDir : await worktreeGitDir(commonDir, root);
    if (!gitDir) throw new KeenError("not_a_git_repository", `${absolute} is not a worktree its repository (${commonDir}) knows`);
    await sandboxCheck;
    const workspace = new LocalWorkspace(root, commonDir, gitDir, options, false, runner ?? localCommandRunner);
    const mainRoot = dirname(commonDir);
    if (options.recovery !== false && root === mainRoot) {
      workspace.recovery = await withRepoLock(commonDir, () =>
        recoverWorktrees({
          commonDir,
          root,
          worktreesDir: workspace.worktreesDir,
          staleLockMs: (options.recovery || {}).staleLockMs ?? DEFAULT_STALE_LOCK_MS,
          identityEnv: gitIdentityEnv(DEFAULT_IDENTITY),
        }),
      );
    } else {
      // Forget worktrees whose folders vanished.
      await git(workspace.target, ["worktree", "prune"]);
    }
    return workspace;
  }

  private get worktreesDir(): string {
    return resolve(this.options.worktreesDir ?? join(this.commonDir, "keen", "worktrees"));
  }

  async resolvePath(path: string): Promise<string> {
    return (await this.locate(path)).full;
  }

  /**
   * {@link resolvePath}, with what the check found on disk: the deepest part of the path that
   * exists (the path itself, or the folder the missing rest goes in) and its `lstat`, so a caller
   * need not look again.
   */
  private async locate(path: string): Promise<{ full: string; found: Found | undefined }> {
    this.assertLive();
    if (typeof path !== "string") throw new PathOutsideWorkspaceError(String(path), "not a string");
    if (path.includes("\0")) throw new PathOutsideWorkspaceError(path, "contains a NUL byte");
    if (isAbsolute(path)) throw new PathOutsideWorkspaceError(path, "absolute paths are not allowed; use a path relative to the workspace root");
    const normalized = normalize(path === "" ? "." : path);
    if (normalized === ".." || normalized.startsWith(`..${sep}`)) throw new PathOutsideWorkspaceError(path, "it climbs above the root with ..");
    // `.git` in any spelling some file system or git itself takes for it (`.GIT`, `.git.`,
    // `.g\u200cit`, `git~1`), at any depth: keen's own git would read a nested one's config.
    if (hasGitDirComponent(normalized)) throw new PathOutsideWorkspaceError(path, "the .git folder is off limits");
    const full = join(this.root, normalized);
    return { full, found: await this.assertNoSymlinkEscape(path, full) };
  }

  /**
   * Resolves symlinks along the existing part of `full` and checks where the path really lands:
   * inside the root, and not in its `.git` (a link the agent made, `d -> .`, must not let keen's
   * own file writes on the host reach the `.git` file the sandbox mounts read-only, or a main
   * checkout's git dir with its config and hooks). Returns the existing part it judged, or
   * undefined when not even the root could be read.
   */
  private async assertNoSymlinkEscape(original: string, full: string, links = 0): Promise<Found | undefined> {
    let current = full;
    while (true) {
      // Both at once: the path is there far more often than not, and then both are needed.
      const [looked, resolved] = await Promise.allSettled([lstat(current), realpath(current)]);
      const unresolved = resolved.status === "rejected" ? ((resolved.reason as NodeJS.ErrnoException).code ?? "error") : undefined;
      // Not there, or gone between the two looks: judged by the part above it.
      if (looked.status === "rejected" || (unresolved === "ENOENT" && !looked.value.isSymbolicLink())) {
        if (current === this.root) return undefined;
        current = dirname(current);
        continue;
      }
      const info = looked.value;
      let real: string;
      if (resolved.status === "fulfilled") real = resolved.value;
      else if (unresolved === "ENOENT") {
        // A dangling link: what it would point to is judged as a path of its own, links in it
        // included (its text alone says nothing of the links it leads through).
        if (links >= MAX_LINKS) throw new PathOutsideWorkspaceError(original, "it leads through too many symbolic links");
        const target = resolve(dirname(current), await readlink(current));
        await this.assertNoSymlinkEscape(original, join(target, relative(current, full)), links + 1);
        return { path: current, info };
      } else {
        // ENAMETOOLONG (a detour longer than the system's limit, which the kernel still
        // follows), ELOOP, EACCES: where it leads cannot be told, so it is not taken.
        throw new PathOutsideWorkspaceError(original, `keen cannot tell where its links lead (${unresolved})`);
      }
      if (!this.contains(real)) throw new PathOutsideWorkspaceError(original, "a symbolic link leads outside the workspace");
      // The part that does not exist yet is created below the resolved part.
      const landing = join(real, relative(current, full));
      if (this.inGitDir(landing)) throw new PathOutsideWorkspaceError(original, "it leads into the .git folder, which is off limits");
      return { path: current, info };
    }
  }

  private contains(absolute: string): boolean {
    const rel = relative(this.root, absolute);
    return rel === "" || (!rel.startsWith(`..${sep}`) && rel !== ".." && !isAbsolute(rel));
  }

  /** True for a `.git` (in any spelling, at any depth), anything below one, and this checkout's git dirs. */
  private inGitDir(absolute: string): boolean {
    if (hasGitDirComponent(relative(this.root, absolute))) return true;
    // A git dir kept inside the checkout under another name (a fork's worktree lies inside the common dir, not the reverse).
    return [this.gitDir, this.commonDir].some((dir) => isInside(this.root, dir) && (absolute === dir || isInside(dir, absolute)));
  }

  async readFile(path: string, options: ReadFileOptions = {}): Promise<string> {
    const full = await this.resolvePath(path);
    this.assertCheckedOut(path, full, true);
    try {
      const bytes = await readRegularFile(full, { maxBytes: options.maxBytes ?? DEFAULT_READ_BYTES, ...(options.signal ? { signal: options.signal } : {}) });
      return bytes.toString("utf8");
    } catch (error) {
      // Name the file as the caller did, not by its host path.
      if (error instanceof KeenError) throw new KeenError(error.code, error.message.split(full).join(path));
      throw fileError(path, error);
    }
  }

  async writeFile(path: string, content: string): Promise<void> {
    const { full, found } = await this.locate(path);
    if (full === this.root) throw new KeenError("is_a_directory", `${path === "" ? "The empty path" : path} names the workspace root, a folder, not a file`);
    this.assertCheckedOut(path, full, false);
    // A folder to make first: anything missing above the file, or a parent that is not a plain
    // folder (a link, or a file, for mkdir to refuse with its own error).
    const parent = dirname(full);
    if (found?.path !== full && !(found?.path === parent && found.info.isDirectory())) {
      try {
        await mkdir(parent, { recursive: true });
      } catch (error) {
        // A leading part that is a file (EEXIST, ENOTDIR) or a name the file system refuses (ENAMETOOLONG).
        throw fileError(path, error);
      }
      // The parent may have been created through a path we already checked; check again after mkdir.
      await this.assertNoSymlinkEscape(path, parent);
    }
    const temp = join(parent, `.keen-${randomBytes(6).toString("hex")}.tmp`);
    try {
      await writeFile(temp, content, "utf8");
      await rename(temp, full);
    } catch (error) {
      await rm(temp, { force: true });
      throw fileError(path, error);
    }
  }

  async exists(path: string): Promise<boolean> {
    const { full, found } = await this.locate(path);
    this.assertCheckedOut(path, full, true);
    // The check above looked at the path itself when it is there; only a link needs following.
    if (found?.path !== full) return false;
    if (!found.info.isSymbolicLink()) return true;
    try {
      await stat(full);
      return true;
    } catch {
      return false;
    }
  }

  async listFiles(options: ListFilesOptions = {}): Promise<string[]> {
    const limit = options.limit ?? 1000;
    // One call: tracked (tag H, or S when git skips it in a sparse worktree), deleted (R, listed
    // besides its H) and untracked (?) files. A name that is not UTF-8 is left out: it cannot be
    // given back as the path it is (see nulSeparatedNames).
    const listed = await gitBytes(this.target, ["ls-files", "-z", "-t", "--cached", "--deleted", "--others", "--exclude-standard"]);
    const present = new Set<string>();
    const deleted = new Set<string>();
    for (const entry of nulSeparatedNames(listed).names) {
      if (entry.length < 3 || entry[1] !== " ") continue;
      const file = entry.slice(2);
      if (entry[0] === "R") deleted.add(file);
      else present.add(file);
    }
    const match = options.pattern ? compileGlob(options.pattern) : undefined;
    const sparse = this.sparsePaths;
    const files = [...present]
      .filter((file) => !deleted.has(file) && (!match || match(file)))
      .filter((file) => !sparse || sparse.some((p) => file === p || file.startsWith(`${p}/`)))
      .sort();
    return files.slice(0, limit);
  }

  /**
   * The files of `commit`, sorted, as `listFiles` lists a fresh fork from it (its tree: no
   * untracked files, no sparse patterns), read from the object store with one `ls-tree`. Names
   * that are not UTF-8 are left out, as `listFiles` leaves them out.
   */
  async listCommitFiles(commit: string): Promise<string[]> {
    this.assertLive();
    const unknown = () => new KeenError("invalid_ref", `"${commit.slice(0, 200)}" does not name a commit`);
    if (commit.includes("\0")) throw unknown();
    const listed = await gitBytes(this.target, ["ls-tree", "-r", "-z", "--name-only", "--full-tree", "--end-of-options", `${commit}^{commit}`]).catch(() => {
      throw unknown();
    });
    return nulSeparatedNames(listed).names.sort();
  }

  async exec(command: string, options: ExecOptions = {}): Promise<ExecResult> {
    const cwd = await this.resolvePath(options.cwd ?? ".");
    const runner = this.runner;
    if (options.readOnly && !runner.enforcesReadOnly) {
      throw new KeenError(
        "read_only_unavailable",
        "Read-only commands need the sandbox, and this workspace runs commands without one (sandbox: false), so nothing would stop a command from changing files. Use read_file, list_files and search_files instead.",
      );
    }
    const sandboxConfig = runner.enforcesReadOnly ? await sandboxGitConfig(this.commonDir) : null;
    return runner.run(command, {
      cwd,
      root: this.root,
      // The common git dir stays visible read-only from every fork, with its config's credentials
      // removed; the rest of the main checkout (the user's untracked and ignored files, a `.env`)
      // does not, except its node_modules, which Node finds from a worktree inside the git dir
      // by walking up the folders (tests and builds in a fork need it).
      readOnlyPaths: [this.commonDir, ...mainDependencies(this.commonDir, this.root)],
      ...(sandboxConfig ? { replaceFiles: [{ path: join(this.commonDir, "config"), source: sandboxConfig }] } : {}),
      ...(options.readOnly ? { readOnly: true } : {}),
      timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      maxOutputBytes: options.maxOutputBytes ?? DEFAULT_OUTPUT_BYTES,
      ...(options.env ? { env: options.env } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
  }

  async currentBranch(): Promise<string> {
    this.assertLive();
    // HEAD in this checkout's own git dir (written only by git) names the branch plainly.
    const head = await readFile(join(this.gitDir, "HEAD"), "utf8").catch(() => "");
    const branch = /^ref: refs\/heads\/([^\n]+)\n?$/.exec(head)?.[1];
    if (branch) return branch;
    if (/^[0-9a-f]{40,64}\n?$/.test(head)) return "HEAD";
    const result = await gitRaw(this.target, ["symbolic-ref", "--short", "-q", "HEAD"]);
    return result.exitCode === 0 ? oneLine(String(result.stdout)) : "HEAD";
  }

  async head(): Promise<string> {
    this.assertLive();
    return (await readHeadFromFiles(this.gitDir, this.commonDir)) ?? (await git(this.target, ["rev-parse", "HEAD"])).trim();
  }

  private get maxFileBytes(): number {
    return this.options.maxFileBytes ?? DEFAULT_MAX_FILE_BYTES;
  }

  async commit(message: string, options: CommitOptions = {}): Promise<CommitResult> {
    return this.locked(async () => {
      // One status answers three questions: unmerged paths (staging one would record its conflict
      // markers as resolved), changes staged before, and whether anything changed at all.
      const status = await this.status();
      if (status.unmerged.length > 0) {
        throw new KeenError("merge_unresolved", `A merge is in progress with conflicts in ${status.unmerged.join(", ")}; finish it with commitMerge or roll it back with abortMerge`);
      }
      if (status.entries === 0 && !options.allowEmpty) return { sha: null, skipped: [] };
      const { staged, skipped } = await stageChanges(this.target, { maxFileBytes: this.maxFileBytes, listed: status.changed });
      // Nothing staged now and nothing staged before: nothing to commit.
      if (staged.length === 0 && !status.stagedBefore && !options.allowEmpty) return { sha: null, skipped };
      const before = await this.headOrNull();
      const args = ["commit", "-q", "--no-verify", ...(options.allowEmpty ? ["--allow-empty"] : []), "-F", "-"];
      const committed = await this.commitAs(args, commitText(message), options.author);
      if (committed.exitCode !== 0) {
        // Staged paths that put the index back where HEAD is (a change undone): nothing to commit.
        const pending = await gitRaw(this.target, ["diff", "--cached", "--quiet"]);
        if (pending.exitCode === 0 && !options.allowEmpty) return { sha: null, skipped };
        throw gitFailure(["commit"], committed);
      }
      return { sha: await this.verifiedHead(before), skipped };
    });
  }

  /**
   * Runs `git commit` (`args`) as `author`, or else as git's own identity when the repository
   * has one configured, or else as the default identity. Without a known identity the commit is
   * first tried with `user.useConfigOnly` (git then refuses rather than make up an identity from
   * the host's user and machine names), which spares looking the identity up when one is
   * configured; when git refuses, the identity is looked up and the commit tried once more.
   */
  private async commitAs(args: string[], input: string, author?: { name: string; email: string }) {
    if (author) return gitRaw(this.target, args, { env: gitIdentityEnv(author), input });
    if (this.shared.identity) return gitRaw(this.target, args, { env: await this.shared.identity, input });
    const configured = await gitRaw(this.target, ["-c", "user.useConfigOnly=true", ...args], { input });
    if (configured.exitCode === 0) {
      // git found a name and an email in its configuration (or GIT_AUTHOR_*/GIT_COMMITTER_*).
      this.shared.identity ??= Promise.resolve({});
      return configured;
    }
    // Any other failure fails again below, as it did before; the lookup is cached either way.
    return gitRaw(this.target, args, { env: await this.identityEnv(), input });
  }

  /**
   * `git status` in one call: how many paths differ from HEAD (staged, modified or untracked, not
   * ignored), which are unmerged, whether any change is staged, and the paths whose work tree
   * differs from the index or that are untracked (what `stageChanges` looks at, NUL-separated raw
   * names). Submodules are not entered (a checkout's nested repository is the agent's to write,
   * config and attributes included).
   */
  private async status(): Promise<{ entries: number; unmerged: string[]; stagedBefore: boolean; changed: Buffer }> {
    const output = await gitBytes(this.target, ["status", "--porcelain", "-z", "--untracked-files=all", "--no-renames", "--ignore-submodules=all"]);
    const unmerged: string[] = [];
    const changed: Buffer[] = [];
    let entries = 0;
    let stagedBefore = false;
    for (const entry of nulSeparatedBytes(output)) {
      // "XY path": X the index against HEAD, Y the work tree against the index (no rename pairs with --no-renames).
      if (entry.length < 4) continue;
      entries++;
      const code = entry.subarray(0, 2).toString("latin1");
      const path = entry.subarray(3);
      if (UNMERGED.has(code)) {
        unmerged.push(path.toString("utf8"));
        continue;
      }
      if (!" ?!".includes(code[0]!)) stagedBefore = true;
      if (code === "??" || code[1] !== " ") changed.push(path, NUL);
    }
    return { entries, unmerged, stagedBefore, changed: Buffer.concat(changed) };
  }

  /**
   * Saves the worktree's files under `refs/keen/checkpoints/<key>` through a temporary index; the
   * checkout's files, index, HEAD and branches are never written. With `filesOf` and
   * `callerKeeps`, saves nothing and starts no git process (`unsaved`): the caller keeps the commit.
   */
  async checkpoint(key: string, label: string, options: CheckpointOptions = {}): Promise<WorkspaceCheckpoint> {
    const target = { ...this.target, maxFileBytes: this.maxFileBytes, ...(this.sparsePaths ? { paths: this.sparsePaths } : {}) };
    const { filesOf } = options;
    if (filesOf !== undefined && !/^(?:[0-9a-f]{40}|[0-9a-f]{64})$/.test(filesOf)) throw new KeenError("invalid_option", `filesOf must be a full commit id, not ${JSON.stringify(filesOf)}`);
    checkpointRef(key); // A key that could never be saved is refused either way.
    // A sparse worktree's files are always staged: its checkpoint records what it holds.
    if (filesOf !== undefined && options.callerKeeps && !this.sparsePaths) {
      if (options.signal?.aborted) throw new AbortedError("The checkpoint was called off");
      return { id: filesOf, label, unsaved: true };
    }
    return this.locked(() => saveCheckpoint(target, key, label, options.signal, this.sparsePaths ? undefined : filesOf));
  }

  async readCheckpoint(key: string): Promise<WorkspaceCheckpoint | null> {
    return readCheckpoint(this.target, key);
  }

  /** Only worktrees keen forked may be restored: a checkout opened with `open` may be a user's. */
  get restorable(): boolean {
    return this.isFork;
  }

  async restoreCheckpoint(key: string, options: { journal?: readonly FileState[] } = {}): Promise<RestoreReport> {
    return this.restoreFiles((target) => restoreCheckpoint(target, key), options.journal ?? []);
  }

  async restoreFilesOf(commit: string, options: { journal?: readonly FileState[] } = {}): Promise<RestoreReport> {
    if (!/^(?:[0-9a-f]{40}|[0-9a-f]{64})$/.test(commit)) throw new KeenError("invalid_option", `restoreFilesOf takes a full commit id, not ${JSON.stringify(commit)}`);
    return this.restoreFiles((target) => restoreFilesOf(target, commit), options.journal ?? []);
  }

  /** Puts back the files `restore` switches to, then writes `journal` over them (see `restoreCheckpoint`). */
  private async restoreFiles(restore: (target: CheckpointTarget) => Promise<RestoreReport>, journal: readonly FileState[]): Promise<RestoreReport> {
    if (!this.isFork) {
      throw new KeenError("restore_refused", `${this.root} is a checkout keen did not create; keen never puts back files in it`);
    }
    return this.locked(async () => {
      // What the journal's paths hold before: one that ends as it was is not reported as changed.
      const before = journal.length > 0 ? await readFileStates(this, journal.map((state) => state.path)) : null;
      // A sparse worktree's paths: what its files are staged against when its index cannot be read.
      const report = await restore({ ...this.target, maxFileBytes: this.maxFileBytes, ...(this.sparsePaths ? { paths: this.sparsePaths } : {}) });
      if (journal.length === 0) return report;
      await writeFileStates(this, journal);
      const changed = new Set(report.changed);
      for (const state of journal) {
        if (sameFileState(before?.find((old) => old.path === state.path), state)) changed.delete(state.path);
        else changed.add(state.path);
      }
      return { changed: [...changed].sort() };
    });
  }

  async dropCheckpoint(key: string): Promise<void> {
    // A ref the common dir's files show is absent costs no git process (the run's end drops every agent's key).
    await dropCheckpoint(this.target, key, this.commonDir);
  }

  /** HEAD's commit, or null when HEAD names none. Read from the ref files when they answer plainly. */
  private async headOrNull(): Promise<string | null> {
    this.assertLive();
    const fromFiles = await readHeadFromFiles(this.gitDir, this.commonDir);
    if (fromFiles) return fromFiles;
    const result = await gitRaw(this.target, ["rev-parse", "-q", "--verify", "HEAD^{commit}"]);
    return result.exitCode === 0 ? oneLine(String(result.stdout)) : null;
  }

  /**
   * The commit HEAD now names, checked to be a commit of this repository that was not HEAD
   * before: a commit keen reports must exist where it says.
   */
  private async verifiedHead(before: string | null): Promise<string> {
    // The id may come from the ref files; cat-file below checks that it names a commit of this repository.
    const sha = await this.headOrNull();
    if (!sha || sha === before) throw new KeenError("git_failed", "git commit reported success but HEAD did not move");
    // A fresh commit is a loose object: its file answers; otherwise git is asked.
    if (await isLooseCommit(this.commonDir, sha)) return sha;
    const inCommon = await gitRaw({ gitDir: this.commonDir, workTree: dirname(this.commonDir) }, ["cat-file", "-e", `${sha}^{commit}`]);
    if (inCommon.exitCode !== 0) throw new KeenError("git_failed", `Commit ${sha} is not in the repository at ${this.commonDir}`);
    return sha;
  }

  /** Serialises git writes to one checkout within this process (its index and HEAD). */
  private locked<T>(task: () => Promise<T>): Promise<T> {
    const previous = checkoutQueues.get(this.gitDir) ?? Promise.resolve();
    const next = previous.catch(() => {}).then(task);
    checkoutQueues.set(this.gitDir, next.catch(() => {}));
    return next;
  }

  /**
   * Forks a worktree on `branch`. The branch is made fresh (at HEAD, `options.from`, or a commit
   * of this checkout's uncommitted work with `includeUncommitted`); an existing branch or a name
   * clashing with an existing ref is refused with `branch_exists` unless `reattach` is set.
   * The report of `includeUncommitted` is on the returned workspace as `lastForkReport`.
   */
  async fork(branch: string, options: ForkOptions = {}): Promise<LocalWorkspace> {
    this.assertLive();
    if (!isValidBranchName(branch)) throw new KeenError("invalid_branch", `"${branch}" is not a valid branch name`);
    if (options.includeUncommitted && options.from !== undefined) {
      throw new KeenError("invalid_option", "includeUncommitted starts from this checkout's HEAD; it cannot be combined with from");
    }
    const paths = options.paths === undefined ? undefined : sparsePaths(options.paths);
    const dir = join(this.worktreesDir, branch);
    const created = await withRepoLock(this.commonDir, async (): Promise<{ child: LocalWorkspace; checkout: boolean }> => {
      // The refs around the name and the start commit are looked up at once; the start only counts for a new branch.
      const plainStart = options.includeUncommitted ? undefined : (options.from ?? "HEAD");
      const [nearby, plainStartCommit] = await Promise.all([
        this.refsAround(branch),
        plainStart === undefined ? undefined : this.startCommit(plainStart),
      ]);
      const branchExists = nearby.exists;
      if (!options.reattach) {
        const clash = branchExists ? `refs/heads/${branch}` : nearby.clash;
        if (clash) throw new KeenError("branch_exists", `Branch "${branch}" cannot be created: ${clash} exists; keen never reuses a branch it did not just create`);
      }
      if (branchExists) {
        const existing = parseWorktreeList(await git(this.target, ["worktree", "list", "--porcelain", "-z"]), "\0").find((entry) => entry.branch === branch);
        if (existing) {
          const child = await this.reattachWorktree(existing.path, existing.locked, branch);
          if (paths) await child.makeSparse(paths);
          return { child, checkout: false };
        }
        // The worktree is gone (a recovery pass removed it): made again, sparse again when the
        // agent had paths, so a file outside them is never checked out (nor read as deleted).
        await this.makeWorktreeParent(dir);
        await git(this.target, ["worktree", "add", "-q", "--no-checkout", "--lock", "--reason", ownLease(), dir, branch]);
        const child = await this.child(dir);
        if (paths) await child.makeSparse(paths);
        const checkedOut = await gitRaw(child.target, ["reset", "-q", "--hard"]);
        if (checkedOut.exitCode !== 0) {
          await child.dispose().catch(() => {});
          throw new KeenError("git_failed", `git reset failed while checking out ${branch}: ${String(checkedOut.stderr || checkedOut.stdout).trim()}`);
        }
        await this.restoreSalvage(child.target, branch);
        return { child, checkout: false };
      }
      let start = options.from ?? "HEAD";
      let report: ForkReport | undefined;
      if (options.includeUncommitted) ({ start, report } = await this.snapshotUncommitted(branch));
      const startCommit = plainStartCommit ?? (await this.startCommit(start));
      if (startCommit.exitCode !== 0) throw new KeenError("invalid_ref", `"${start}" does not name a commit`);
      if (!paths && this.options.reuseWorktrees) {
        const reused = await this.reuseParked(dir, branch, oneLine(String(startCommit.stdout)));
        if (reused) {
          reused.forkReport = report;
          return { child: reused, checkout: false };
        }
      }
      await this.makeWorktreeParent(dir);
      // The lock's reason is the lease: it names this process, so a later recovery pass knows when the worktree is abandoned.
      // Only the branch and the registration need the repository lock; the files are checked out after it is released.
      await addWorktree({ commonDir: this.commonDir, main: this.target, dir, branch, commit: oneLine(String(startCommit.stdout)), lockReason: ownLease() });
      const child = await this.child(dir);
      child.forkReport = report;
      child.dotGit = await readFile(join(child.root, ".git"), "utf8").catch(() => undefined);
      // The checkout below applies the patterns.
      if (paths) await child.makeSparse(paths);
      return { child, checkout: true };
    });
    if (created.checkout) {
      // What `worktree add` does itself after registering, here outside the lock, so forks of one
      // repository check out their files in parallel. The worktree is new, locked with this
      // process's lease and not yet handed out: nothing else writes its index or files.
      const checkedOut = await gitRaw(created.child.target, ["reset", "-q", "--hard"]);
      if (checkedOut.exitCode !== 0) {
        await created.child.dispose().catch(() => {});
        throw new KeenError("git_failed", `git reset failed while checking out ${branch}: ${String(checkedOut.stderr || checkedOut.stdout).trim()}`);
      }
    }
    return created.child;
  }

  /**
   * With one `for-each-ref`: whether `refs/heads/<branch>` exists, and an existing ref it would
   * clash with as file/folder (`a/b` when creating `a`, or `a` when creating `a/b`). A pattern
   * matches the ref itself and every ref below it; `branch` passed check-ref-format, so it holds
   * no glob characters.
   */
  private async refsAround(branch: string): Promise<RefsAround> {
    const fromFiles = await refsAroundFromFiles(this.commonDir, branch);
    if (fromFiles) return fromFiles;
    const own = `refs/heads/${branch}`;
    const parts = branch.split("/");
    const prefixes = parts.slice(1).map((_, i) => `refs/heads/${parts.slice(0, i + 1).join("/")}`);
    const refs = new Set(
      nulSeparated(await git(this.target, ["for-each-ref", "--format=%(refname)%00", own, ...prefixes]))
        .map((ref) => ref.trim())
        .filter(Boolean),
    );
    const below = [...refs].filter((ref) => ref.startsWith(`${own}/`)).sort();
    return { exists: refs.has(own), clash: below[0] ?? prefixes.find((prefix) => refs.has(prefix)) ?? null };
  }

  /**
   * `start` resolved to a commit, as `rev-parse --verify -q <start>^{commit}` answers. HEAD is
   * read from the ref files when they answer plainly (a commit id there that is not a commit makes
   * `worktree add` fail later, with git's own message).
   */
  private async startCommit(start: string): Promise<{ exitCode: number; stdout: string }> {
    // HEAD, or the commit id HEAD names (a run branch starts from the id its caller read).
    if (start === "HEAD" || /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/.test(start)) {
      const sha = await readHeadFromFiles(this.gitDir, this.commonDir);
      if (sha && (start === "HEAD" || sha === start)) return { exitCode: 0, stdout: sha };
    }
    const result = await gitRaw(this.target, ["rev-parse", "--verify", "-q", `${start}^{commit}`]);
    return { exitCode: result.exitCode ?? 1, stdout: String(result.stdout) };
  }

  /**
   * Makes the folder a new worktree `dir` goes in. Where this checkout holds enough files for it
   * to pay, that folder is spread (`spreadSubfolders`): each worktree made in it starts in a block
   * group of its own, away from the inodes earlier worktrees freed.
   */
  private async makeWorktreeParent(dir: string): Promise<void> {
    await mkdir(dirname(dir), { recursive: true });
    if (((await indexEntryCount(this.gitDir)) ?? SPREAD_MIN_FILES) >= SPREAD_MIN_FILES) await spreadSubfolders(dirname(dir));
  }

  /** Writes the worktree's own sparse patterns (info/ in its git dir is per worktree) and marks it sparse. */
  private async makeSparse(paths: readonly string[]): Promise<void> {
    await mkdir(join(this.gitDir, "info"), { recursive: true });
    await writeFile(join(this.gitDir, "info", "sparse-checkout"), paths.map(sparsePattern).join(""), "utf8");
    this.sparsePaths = paths;
  }

  /** Resume: attach to the worktree already on `branch`, when it is keen's and no other live process holds it. */
  private async reattachWorktree(path: string, locked: string | null, branch: string): Promise<LocalWorkspace> {
    if (!isInside(this.worktreesDir, path)) {
      throw new KeenError("worktree_in_use", `Branch "${branch}" is checked out in ${path}, which keen did not create; it is left alone`);
    }
    const lease = parseLease(locked ?? undefined);
    const own = lease !== undefined && lease.pid === process.pid && lease.host === parseLease(ownLease())!.host;
    if (lease && !own && isLeaseLive(lease)) {
      throw new KeenError("worktree_in_use", `The worktree of "${branch}" (${path}) is in use by another keen process (pid ${lease.pid})`);
    }
    if (!own) {
      const gitDir = await worktreeGitDir(this.commonDir, path);
      if (gitDir) {
        // Its owner is dead: so is any writer of its index lock.
        await rm(join(gitDir, "index.lock"), { force: true });
        await rm(join(gitDir, "locked"), { force: true });
      }
      await git(this.target, ["worktree", "lock", "--reason", ownLease(), path]);
      await removeTempFiles(path);
    }
    return this.child(path);
  }

  /**
   * Commits this checkout's tracked modifications and untracked, non-ignored files (minus
   * credentials and what `commit` would also leave out) on top of HEAD, through a temporary
   * index: the checkout's own index, working tree and stash are never written.
   */
  private async snapshotUncommitted(branch: string): Promise<{ start: string; report: ForkReport }> {
    const indexDir = await mkdtempIndexDir();
    const env = { GIT_INDEX_FILE: join(indexDir, "index") };
    try {
      await git(this.target, ["read-tree", "HEAD"], { env });
      // From a sparse worktree: the files outside its paths it does not hold are not missing, only
      // not checked out; one it held (a command wrote it, a commit took it) and lost is a deletion.
      if (this.sparsePaths) {
        const held = filesBySkipWorktree(await git(this.target, ["ls-files", "-t", "-z"]), false);
        await skipOutsidePaths(this.target, env, this.sparsePaths, held);
      }
      const { staged, skipped } = await stageChanges(this.target, { maxFileBytes: this.maxFileBytes, env });
      const head = await this.head();
      if (staged.length === 0) return { start: head, report: { included: [], skipped } };
      const tree = (await git(this.target, ["write-tree"], { env })).trim();
      const message = `keen: uncommitted work carried into ${branch}`;
      const commit = (await git(this.target, ["commit-tree", tree, "-p", head, "-F", "-"], { env: { ...env, ...(await this.identityEnv()) }, input: message })).trim();
      return { start: commit, report: { included: staged.sort(), skipped } };
    } finally {
      await rm(indexDir, { recursive: true, force: true });
    }
  }

  /** Puts back the uncommitted work a recovery pass saved for `branch`, when the branch has not moved since. */
  private async restoreSalvage(target: GitTarget, branch: string): Promise<void> {
    const ref = salvageRef(branch);
    const saved = await gitRaw(target, ["rev-parse", "--verify", "-q", ref]);
    if (saved.exitCode !== 0) return;
    const sha = oneLine(String(saved.stdout));
    const parent = await gitRaw(target, ["rev-parse", `${sha}^`]);
    const head = await gitRaw(target, ["rev-parse", "HEAD"]);
    if (String(parent.stdout) !== String(head.stdout)) return; // Kept for inspection: it no longer applies cleanly.
    await git(target, ["read-tree", "-m", "-u", "HEAD", sha]);
    await git(target, ["update-ref", "-d", ref]);
  }

  private async child(dir: string): Promise<LocalWorkspace> {
    const root = await realpath(dir);
    const gitDir = await worktreeGitDir(this.commonDir, root);
    if (!gitDir) throw new KeenError("git_failed", `git does not list ${root} as a worktree of ${this.commonDir}`);
    return new LocalWorkspace(root, this.commonDir, gitDir, this.options, true, this.runner, this.shared);
  }

  async merge(branch: string, message: string): Promise<MergeResult> {
    return this.locked(async () => {
      const ref = branchRef(branch);
      const [before, env] = await Promise.all([this.headOrNull(), this.identityEnv()]);
      const result = await gitRaw(this.target, ["merge", "--no-ff", "--no-verify", "-m", commitText(message), "--end-of-options", ref], { env });
      if (result.exitCode === 0) {
        // A branch with nothing new ("Already up to date") merges as a no-op: HEAD stays where it was.
        const after = await this.headOrNull();
        if (after !== null && after === before) {
          const contained = await gitRaw(this.target, ["merge-base", "--is-ancestor", "--end-of-options", ref, after]);
          if (contained.exitCode === 0) return { status: "merged", sha: after };
        }
        return { status: "merged", sha: await this.verifiedHead(before) };
      }
      const files = await this.conflictedFiles();
      if (files.length > 0) return { status: "conflict", files };
      await this.abortMerge();
      throw new KeenError("merge_failed", `Merging ${branch} failed: ${String(result.stderr || result.stdout).trim()}`);
    });
  }

  async mergeMany(merges: ReadonlyArray<{ branch: string; message: string }>): Promise<Array<{ branch: string; sha: string }>> {
    if (merges.length === 0) return [];
    return this.locked(async () => {
      const before = await this.headOrNull();
      if (before === null) throw new KeenError("merge_failed", "Nothing to merge into: the current branch has no commit yet");
      const names = merges.map(({ branch }) => branch);
      const refs = names.map(branchRef);
      const identity = this.identityEnv();
      const [resolved, staged, env, writeCommit] = await Promise.all([
        gitRaw(this.target, ["rev-parse", `${before}^{tree}`, ...refs.map((ref) => `${ref}^{commit}`)]),
        // `git merge` refuses to start over staged changes; so does this.
        gitRaw(this.target, ["diff-index", "--cached", "--quiet", before, "--"]),
        identity,
        // The merge commits are written here, as `commit-tree` would write them, where git would write plain ones.
        identity.then((env) => commitWriter(this.target, this.commonDir, env, before.length)),
      ]);
      const ids = String(resolved.stdout).split("\n").filter(Boolean);
      if (resolved.exitCode !== 0 || ids.length !== names.length + 1 || !ids.every((id) => OBJECT_ID.test(id))) {
        throw new KeenError("merge_failed", `Merging ${names.join(", ")} failed: ${String(resolved.stderr).trim() || "not every branch names a commit"}`);
      }
      if (staged.exitCode !== 0) throw new KeenError("merge_failed", `Merging ${names.join(", ")} failed: the index holds staged changes`);
      // Each merge is made from the objects alone (merge-tree, then its commit); the worktree moves once.
      const startTree = ids[0]!;
      let head = before;
      let headTree = startTree;
      const merged: Array<{ branch: string; sha: string; tree: string }> = [];
      for (const [i, { branch, message }] of merges.entries()) {
        const theirs = ids[i + 1]!;
        const result = await gitRaw(this.target, ["merge-tree", "--write-tree", "--no-messages", head, theirs]);
        if (result.exitCode === 1) break; // Would conflict: left to `merge`.
        const tree = oneLine(String(result.stdout)).split("\n")[0]!;
        if (result.exitCode !== 0 || !OBJECT_ID.test(tree)) {
          throw new KeenError("merge_failed", `Merging ${branch} failed: ${String(result.stderr || result.stdout).trim()}`);
        }
        // A branch already merged changes nothing, as `git merge` says "Already up to date".
        if (!(tree === headTree && (await gitRaw(this.target, ["merge-base", "--is-ancestor", theirs, head])).exitCode === 0)) {
          // A commit the writer cannot write (the objects folder refusing it, say) is left to commit-tree, which answers as before.
          const written = writeCommit ? await writeCommit(tree, [head, theirs], mergeMessage(message)).catch(() => undefined) : undefined;
          head = written ?? oneLine(await git(this.target, ["commit-tree", tree, "-p", head, "-p", theirs, "-F", "-"], { env, input: mergeMessage(message) }));
          headTree = tree;
        }
        merged.push({ branch, sha: head, tree });
      }
      // git reads a merge's attributes (merge drivers, binary) from the worktree, which stays at
      // `before` until the end: once a merge changes a .gitattributes file, the next one would
      // be made under the old rules. The list stops there, and the rest go through `merge`.
      const kept = merged.slice(0, (await this.firstAttributesChange(startTree, merged.slice(0, -1).map((m) => m.tree))) + 1);
      const last = kept.at(-1);
      if (!last || last.sha === before) return kept.map(({ branch, sha }) => ({ branch, sha }));
      // Index and worktree follow in one step; a file in the way stops it before anything changes.
      const moved = await gitRaw(this.target, ["merge", "-q", "--ff-only", "--no-verify", "--end-of-options", last.sha]);
      if (moved.exitCode !== 0) throw new KeenError("merge_failed", `Merging ${names.join(", ")} failed: ${String(moved.stderr || moved.stdout).trim()}`);
      const now = await this.verifiedHead(before);
      if (now !== last.sha) throw new KeenError("git_failed", `After merging, HEAD is ${now}, not the merge ${last.sha}`);
      return kept.map(({ branch, sha }) => ({ branch, sha }));
    });
  }

  /**
   * The index of the first of `trees` whose .gitattributes files differ from `base`'s, or
   * `trees.length` when none do; one `diff-tree` for all of them.
   */
  private async firstAttributesChange(base: string, trees: string[]): Promise<number> {
    if (trees.length === 0) return 0;
    const listed = await gitRaw(this.target, ["diff-tree", "--stdin", "-r", "--name-only", "-z"], { input: trees.map((tree) => `${base} ${tree}\n`).join("") });
    // Unreadable output counts as a change at the first: only that merge is kept.
    if (listed.exitCode !== 0) return 0;
    const out = String(listed.stdout);
    let at = 0;
    for (const [i, tree] of trees.entries()) {
      const header = `${base} ${tree}\n`;
      if (!out.startsWith(header, at)) return 0;
      at += header.length;
      const next = i + 1 < trees.length ? `${base} ${trees[i + 1]}\n` : undefined;
      while (at < out.length && !(next !== undefined && out.startsWith(next, at))) {
        const end = out.indexOf("\0", at);
        const name = out.slice(at, end === -1 ? out.length : end);
        at = end === -1 ? out.length : end + 1;
        if (name === ".gitattributes" || name.endsWith("/.gitattributes")) return i;
      }
    }
    return trees.length;
  }

  async commitMerge(message: string): Promise<string> {
    return this.locked(async () => {
      const conflicted = await this.conflictedFiles();
      const left: string[] = [];
      for (const file of conflicted) {
        const problem = await this.unresolved(file);
        if (problem) left.push(`${file} (${problem})`);
      }
      if (left.length > 0) throw new KeenError("merge_unresolved", `Conflicts remain in ${left.join(", ")}`);
      const { skipped } = await stageChanges(this.target, { maxFileBytes: this.maxFileBytes });
      const stillConflicted = await this.conflictedFiles();
      if (stillConflicted.length > 0) {
        const why = skipped.filter((file) => stillConflicted.includes(file.path)).map((file) => `${file.path} (${file.reason})`);
        throw new KeenError("merge_unresolved", `Conflicts remain in ${(why.length ? why : stillConflicted).join(", ")}`);
      }
      const before = await this.headOrNull();
      await git(this.target, ["commit", "-q", "--no-verify", "-F", "-"], { env: await this.identityEnv(), input: commitText(message) });
      return this.verifiedHead(before);
    });
  }

  /**
   * Why a conflicted path is not resolved, or null when it is. Read on the host without following
   * a symlink or opening anything but a regular file inside the checkout: a path whose folders
   * lead elsewhere, a FIFO or a device is never opened.
   */
  private async unresolved(file: string): Promise<string | null> {
    const full = join(this.root, file);
    // Gone (null), or there but not resolvable (undefined: a detour of links too long to resolve, a loop), which is not followed.
    const parent = await realpath(dirname(full)).catch((error: NodeJS.ErrnoException) => (error.code === "ENOENT" ? null : undefined));
    if (parent === undefined) return "a folder on its path leads where keen cannot tell";
    if (parent !== null && parent !== dirname(full)) return "a folder on its path is a symbolic link";
    const info = await lstat(full).catch(() => null);
    if (!info || info.isSymbolicLink()) return null; // Deleted, or a link git records as its target text.
    if (!info.isFile()) return "not a regular file";
    try {
      const text = (await readRegularFile(full, { maxBytes: MAX_MERGE_FILE_BYTES })).toString("utf8");
      return CONFLICT_MARKER.test(text) ? "conflict markers" : null;
    } catch (error) {
      return error instanceof Error ? error.message : String(error);
    }
  }

  async abortMerge(): Promise<void> {
    this.assertLive();
    // A merge in progress is MERGE_HEAD in this checkout's own git dir, which only git writes.
    if ((await lstat(join(this.gitDir, "MERGE_HEAD")).catch(() => null)) === null) return;
    await git(this.target, ["merge", "--abort"]);
  }

  async resetTo(sha: string): Promise<void> {
    await this.abortMerge();
    await git(this.target, ["reset", "-q", "--hard", sha]);
    await git(this.target, ["clean", "-q", "-fd"]);
  }

  async conflictedFiles(): Promise<string[]> {
    return nulSeparated(await git(this.target, ["diff", "--name-only", "--diff-filter=U", "-z"]));
  }

  async dispose(): Promise<void> {
    if (!this.isFork || this.disposed) return;
    const main: GitTarget = { gitDir: this.commonDir, workTree: dirname(this.commonDir) };
    await withRepoLock(this.commonDir, async () => {
      if (this.disposed) return;
      this.disposed = true;
      if (this.options.reuseWorktrees && (await this.park())) return;
      await removeWorktree(main, { commonDir: this.commonDir, worktreesDir: this.worktreesDir, root: this.root, gitDir: this.gitDir });
    });
  }

  /**
   * Removes the worktrees kept for reuse (`reuseWorktrees`) of this repository: their folders and
   * registrations. Branches are kept. No-op when none is kept.
   */
  async releaseWorktrees(): Promise<void> {
    await releaseParked(this.commonDir, this.worktreesDir);
  }

  private get poolKey(): string {
    return `${this.commonDir}\0${this.worktreesDir}`;
  }

  /**
   * Keeps this fork's worktree for the next fork (under the repository lock): its untracked and
   * ignored files removed, HEAD detached from the branch, the folder moved under `.parked/`.
   * False, with nothing changed that matters, when it is not to be kept.
   */
  private async park(): Promise<boolean> {
    const pool = parkedPool(this.poolKey);
    if (this.sparsePaths || this.dotGit === undefined || pool.trees.length >= MAX_PARKED) return false;
    if (!(await isReusable(this.root, this.gitDir, this.dotGit))) return false;
    const target: GitTarget = { gitDir: this.gitDir, workTree: this.root };
    const sha = await readHeadFromFiles(this.gitDir, this.commonDir);
    if (!sha) return false;
    // Nested repositories too (-ff): nothing the agent left outside its commits survives. clean
    // never goes into a submodule's folder (a tracked gitlink), so whatever the agent put there
    // would reach the next fork: a worktree with submodules is not kept.
    const [cleaned, gitlinks] = await Promise.all([gitRaw(target, ["clean", "-q", "-ffdx"]), hasGitlinks(target, sha.length / 2)]);
    if (cleaned.exitCode !== 0 || gitlinks !== false) return false;
    // Detached, so the branch is held by no worktree (`git branch -d` works, `fork(branch, { reattach })` makes a new one).
    await writeFileAtomically(join(this.gitDir, "HEAD"), `${sha}\n`);
    const parked = join(this.worktreesDir, PARKED_DIR, randomBytes(6).toString("hex"));
    await mkdir(dirname(parked), { recursive: true });
    await rename(this.root, parked);
    try {
      // What `git worktree move` does: the registration names the new place; the `.git` file, naming the git dir, stays valid.
      await writeFileAtomically(join(this.gitDir, "gitdir"), `${join(parked, ".git")}\n`);
    } catch {
      await rename(parked, this.root);
      return false;
    }
    pool.trees.push({ root: parked, gitDir: this.gitDir, dotGit: this.dotGit });
    clearTimeout(pool.timer);
    const { commonDir, worktreesDir } = this;
    pool.timer = setTimeout(() => void releaseParked(commonDir, worktreesDir).catch(() => {}), PARKED_IDLE_MS);
    pool.timer.unref();
    return true;
  }

  /**
   * A kept worktree moved to `dir` and switched to a new `branch` at `start` (under the
   * repository lock): `checkout -f` writes only the files that differ from what it holds, and its
   * index's stat data spares rehashing the rest. Undefined when none is kept (or `dir` is taken).
   */
  private async reuseParked(dir: string, branch: string, start: string): Promise<LocalWorkspace | undefined> {
    const pool = parkedPools.get(this.poolKey);
    if (!pool || pool.trees.length === 0) return undefined;
    if ((await lstat(dir).catch(() => null)) !== null) return undefined;
    const main: GitTarget = { gitDir: this.commonDir, workTree: dirname(this.commonDir) };
    while (pool.trees.length > 0) {
      const parked = pool.trees.pop()!;
      if (!(await isReusable(parked.root, parked.gitDir, parked.dotGit))) {
        await removeWorktree(main, { commonDir: this.commonDir, worktreesDir: this.worktreesDir, root: parked.root, gitDir: parked.gitDir });
        continue;
      }
      await mkdir(dirname(dir), { recursive: true });
      await rename(parked.root, dir);
      const root = await realpath(dir);
      await writeFileAtomically(join(parked.gitDir, "gitdir"), `${join(root, ".git")}\n`);
      const child = new LocalWorkspace(root, this.commonDir, parked.gitDir, this.options, true, this.runner, this.shared);
      child.dotGit = parked.dotGit;
      const switched = await gitRaw(child.target, ["checkout", "-q", "-f", "--no-track", "-b", branch, start]);
      if (switched.exitCode !== 0) {
        child.disposed = true;
        await removeWorktree(main, { commonDir: this.commonDir, worktreesDir: this.worktreesDir, root, gitDir: parked.gitDir });
        throw new KeenError("git_failed", `git checkout failed while making ${branch}: ${String(switched.stderr || switched.stdout).trim()}`);
      }
      return child;
    }
    return undefined;
  }

  private async identityEnv(author?: { name: string; email: string }): Promise<Record<string, string>> {
    if (author) return gitIdentityEnv(author);
    // The repository's config sits in the common dir, which agents cannot write: read once per workspace and its forks.
    this.shared.identity ??= gitRaw(this.target, ["config", "user.email"]).then((configured) =>
      configured.exitCode === 0 && String(configured.stdout).trim() ? {} : gitIdentityEnv(this.options.defaultIdentity ?? DEFAULT_IDENTITY),
    );
    return this.shared.identity;
  }
}

/**
 * The `paths` of a sparse fork, checked like any workspace path and normalised (`/`-separated, no
 * trailing slash); undefined when one of them is the root, which asks for the whole checkout.
 */
function sparsePaths(paths: unknown): string[] | undefined {
  if (!Array.isArray(paths) || paths.length === 0) throw new KeenError("invalid_option", "paths must list at least one file or folder");
  const normalised = new Set<string>();
  for (const path of paths) {
    if (typeof path !== "string" || path.trim() === "" || /[\0\n\r]/.test(path)) throw new KeenError("invalid_option", `paths: ${JSON.stringify(path)} is not a path`);
    if (isAbsolute(path)) throw new KeenError("invalid_option", `paths: ${path} must be relative to the root`);
    const clean = normalize(path).split(sep).join("/").replace(/\/+$/, "");
    if (clean === "" || clean === ".") return undefined;
    if (clean === ".." || clean.startsWith("../")) throw new KeenError("invalid_option", `paths: ${path} climbs above the root`);
    if (hasGitDirComponent(clean)) throw new KeenError("invalid_option", `paths: ${path} is inside .git`);
    normalised.add(clean);
  }
  return [...normalised].sort();
}

/** One line of a (non-cone) sparse-checkout file matching exactly `path` and what lies below it. */
function sparsePattern(path: string): string {
  const escaped = path.replace(/[\\*?[]/g, (c) => `\\${c}`).replace(/ +$/, (spaces) => spaces.replace(/ /g, "\\ "));
  return `/${escaped}\n`;
}

/** What a workspace and its forks share. */
interface SharedState {
  /** The identity environment for commits without an explicit author, once known. */
  identity?: Promise<Record<string, string>>;
}

/**
 * A commit message git can take: control characters other than newline and tab (a NUL would make
 * git fail and lose the commit) become spaces.
 */
function commitText(message: string): string {
  // eslint-disable-next-line no-control-regex
  const clean = message.replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, " ");
  return clean.trim() === "" ? "keen commit" : clean;
}

/**
 * The full ref of a branch to merge: a name is always read as `refs/heads/<name>`, never as a tag
 * or another ref of that name, an option or a revision expression.
 */
function branchRef(branch: string): string {
  if (!isValidBranchName(branch)) throw new KeenError("merge_failed", `Cannot merge "${branch.slice(0, 200)}": not a branch name`);
  return `refs/heads/${branch}`;
}

/**
 * A merge commit's message as `git merge -m` records it: trailing spaces of each line, blank lines
 * at either end and runs of blank lines removed, one newline at the end.
 */
function mergeMessage(message: string): string {
  // Only ASCII white space, as git strips it (a no-break space at the end of a line stays).
  const lines = commitText(message).split("\n").map((line) => line.replace(/[ \t\v\f\r]+$/, ""));
  const kept = lines.filter((line, i) => line !== "" || (i > 0 && lines[i - 1] !== ""));
  while (kept[0] === "") kept.shift();
  while (kept.at(-1) === "") kept.pop();
  return `${kept.join("\n")}\n`;
}

/** A private folder for a temporary index file. */
function mkdtempIndexDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), "keen-index-"));
}

/**
 * The main checkout's `node_modules`, when `root` (a fork's worktree) lies inside that checkout,
 * so Node's upward search from the worktree reaches it.
 */
function mainDependencies(commonDir: string, root: string): string[] {
  const main = dirname(commonDir);
  if (root === main || !isInside(main, root)) return [];
  const modules = join(main, "node_modules");
  return existsSync(modules) ? [modules] : [];
}

function fileError(path: string, error: unknown): KeenError {
  const code = (error as NodeJS.ErrnoException)?.code;
  if (code === "ENOENT") return new KeenError("file_not_found", `File not found: ${path}`);
  if (code === "EISDIR") return new KeenError("is_a_directory", `${path} is a folder, not a file`);
  if (code === "EACCES") return new KeenError("permission_denied", `Permission denied: ${path}`);
  if (code === "ELOOP") return new KeenError("not_regular_file", `${path} is a symbolic link; read the file it points to instead`);
  if (code === "EEXIST" || code === "ENOTDIR") return new KeenError("not_a_directory", `${path}: a leading part of the path is a file, not a folder`);
  if (code === "ENAMETOOLONG") return new KeenError("path_too_long", `${path.length > 200 ? `${path.slice(0, 200)}…` : path}: the path or one of its names is too long for the file system`);
  return new KeenError("file_error", `${path}: ${error instanceof Error ? error.message : String(error)}`);
}

/** The environment that makes git author and commit as `identity`. */
function gitIdentityEnv(identity: { name: string; email: string }): Record<string, string> {
  return {
    GIT_AUTHOR_NAME: identity.name,
    GIT_AUTHOR_EMAIL: identity.email,
    GIT_COMMITTER_NAME: identity.name,
    GIT_COMMITTER_EMAIL: identity.email,
  };
}

/**
 * Removes a worktree's folder and registration, even a locked one or one whose `.git` file was
 * rewritten: in this process when the registration is the one keen knows, through git otherwise.
 */
async function removeWorktree(main: GitTarget, worktree: KeenWorktree): Promise<void> {
  if (await removeWorktreeInProcess(worktree)) return;
  const { root } = worktree;
  // Doubly forced, remove takes a locked worktree and its registration in one step.
  const removed = await gitRaw(main, ["worktree", "remove", "--force", "--force", root]);
  if (removed.exitCode === 0 && (await lstat(root).catch(() => null)) === null) return;
  // Removal failed (e.g. on a folder that cannot be deleted): unlock (the lease) so the
  // registration is pruned, and remove the folder ourselves.
  await gitRaw(main, ["worktree", "unlock", root]);
  await rm(root, { recursive: true, force: true });
  await gitRaw(main, ["worktree", "prune"]);
}

function parkedPool(key: string): { trees: ParkedWorktree[]; timer?: NodeJS.Timeout } {
  let pool = parkedPools.get(key);
  if (!pool) parkedPools.set(key, (pool = { trees: [] }));
  return pool;
}

/** Removes the kept worktrees of a repository's worktrees folder. */
async function releaseParked(commonDir: string, worktreesDir: string): Promise<void> {
  const pool = parkedPools.get(`${commonDir}\0${worktreesDir}`);
  if (!pool) return;
  clearTimeout(pool.timer);
  const main: GitTarget = { gitDir: commonDir, workTree: dirname(commonDir) };
  await withRepoLock(commonDir, async () => {
    for (const parked of pool.trees.splice(0)) await removeWorktree(main, { commonDir, worktreesDir, root: parked.root, gitDir: parked.gitDir });
  });
}

/**
 * Whether a worktree may be kept or reused: its folder a real directory where it should be, its
 * `.git` a regular file still as git wrote it, still locked with this process's lease, and no
 * merge, rebase, sparse patterns or index lock in its git dir.
 */
async function isReusable(root: string, gitDir: string, dotGit: string): Promise<boolean> {
  const info = await lstat(root).catch(() => null);
  if (!info?.isDirectory() || (await realpath(root).catch(() => null)) !== root) return false;
  const dot = await lstat(join(root, ".git")).catch(() => null);
  if (!dot?.isFile() || (await readFile(join(root, ".git"), "utf8").catch(() => null)) !== dotGit) return false;
  const lease = await readFile(join(gitDir, "locked"), "utf8").catch(() => null);
  if (lease === null || lease.trim() !== ownLease()) return false;
  for (const name of IN_PROGRESS) {
    if ((await lstat(join(gitDir, name)).catch(() => null)) !== null) return false;
  }
  return true;
}

/**
 * Whether the checkout's index records a submodule (a gitlink): read from the index file, or
 * from `git ls-files --stage` where the file does not answer plainly; null when neither can tell.
 */
async function hasGitlinks(target: GitTarget, hashBytes: number): Promise<boolean | null> {
  const fromFile = await indexHasGitlink(target.gitDir, hashBytes);
  if (fromFile !== undefined) return fromFile;
  const entries = await gitBytes(target, ["ls-files", "-z", "--stage"]).catch(() => null);
  return entries === null ? null : nulSeparatedBytes(entries).some((entry) => entry.subarray(0, 7).toString("latin1") === "160000 ");
}

/** Replaces a file of a git dir by rename, as git replaces its own files. */
async function writeFileAtomically(path: string, content: string): Promise<void> {
  const temp = `${path}.keen-${randomBytes(4).toString("hex")}`;
  try {
    await writeFile(temp, content, { encoding: "utf8", flag: "wx" });
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}
