import { randomBytes } from "node:crypto";
import { lstat, mkdir, readFile, readlink, realpath, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname, isAbsolute, join, normalize, relative, resolve, sep } from "node:path";
import { execa } from "execa";
import picomatch from "picomatch";
import { KeenError, PathOutsideWorkspaceError } from "../errors.js";
import { localCommandRunner, type CommandRunner } from "./command-runner.js";
import { assertSandboxAvailable, sandboxRunner, type SandboxOptions } from "./sandbox-runner.js";
import { isLeaseLive, ownLease, parseLease, parseWorktreeList, recoverWorktrees, salvageRef, type RecoveryReport } from "./worktree-recovery.js";
import type {
  CommitOptions,
  ExecOptions,
  ExecResult,
  ForkableWorkspace,
  ListFilesOptions,
  MergeResult,
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
   * next `fork` of that branch) and git lock files no git process holds are deleted once older
   * than `staleLockMs` (default 10 000). `false` skips it.
   */
  recovery?: false | { staleLockMs?: number };
  /** Author and committer when the repository has no identity configured. */
  defaultIdentity?: { name: string; email: string };
  /** Where child worktrees go. Default: `<git dir>/keen/worktrees`. */
  worktreesDir?: string;
}

const CONFLICT_MARKER = /^(<{7}|>{7}|={7})( |$)/m;
const DEFAULT_IDENTITY = { name: "keen", email: "keen@localhost" };
const DEFAULT_TIMEOUT_MS = 120_000;
const DEFAULT_OUTPUT_BYTES = 100_000;
const DEFAULT_STALE_LOCK_MS = 10_000;

/** Serialises git operations that take repository-wide locks (worktrees, branches, refs). */
const repoLocks = new Map<string, Promise<unknown>>();
function withRepoLock<T>(key: string, task: () => Promise<T>): Promise<T> {
  const previous = repoLocks.get(key) ?? Promise.resolve();
  const next = previous.catch(() => {}).then(task);
  repoLocks.set(key, next.catch(() => {}));
  return next;
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
export class LocalWorkspace implements ForkableWorkspace {
  private recovery: RecoveryReport = { removedWorktrees: [], salvagedBranches: [], removedLocks: [] };

  private constructor(
    readonly root: string,
    private readonly commonDir: string,
    private readonly options: LocalWorkspaceOptions,
    private readonly isFork: boolean,
    private readonly runner: CommandRunner,
  ) {}

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
    const probe = await execa("git", ["rev-parse", "--show-toplevel", "--git-common-dir"], { cwd: absolute, reject: false });
    if (probe.exitCode !== 0) throw new KeenError("not_a_git_repository", `${absolute} is not a git repository (run git init first)`);
    const [top, common] = probe.stdout.split("\n");
    const root = await realpath(top!);
    const commonDir = await realpath(resolve(absolute, common!));
    let runner = options.commandRunner;
    if (!runner && options.sandbox !== false) {
      const sandbox = typeof options.sandbox === "object" ? options.sandbox : {};
      runner = sandboxRunner(sandbox);
      await assertSandboxAvailable(sandbox.bwrapPath ? { bwrapPath: sandbox.bwrapPath } : {});
    }
    const workspace = new LocalWorkspace(root, commonDir, options, false, runner ?? localCommandRunner);
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
      await workspace.git(["worktree", "prune"]);
    }
    return workspace;
  }

  private get worktreesDir(): string {
    return resolve(this.options.worktreesDir ?? join(this.commonDir, "keen", "worktrees"));
  }

  async resolvePath(path: string): Promise<string> {
    if (typeof path !== "string") throw new PathOutsideWorkspaceError(String(path), "not a string");
    if (path.includes("\0")) throw new PathOutsideWorkspaceError(path, "contains a NUL byte");
    if (isAbsolute(path)) throw new PathOutsideWorkspaceError(path, "absolute paths are not allowed; use a path relative to the workspace root");
    const normalized = normalize(path === "" ? "." : path);
    if (normalized === ".." || normalized.startsWith(`..${sep}`)) throw new PathOutsideWorkspaceError(path, "it climbs above the root with ..");
    const first = normalized.split(sep)[0];
    if (first === ".git") throw new PathOutsideWorkspaceError(path, "the .git folder is off limits");
    const full = join(this.root, normalized);
    await this.assertNoSymlinkEscape(path, full);
    return full;
  }

  /** Resolves symlinks along the existing part of `full` and checks the result stays inside. */
  private async assertNoSymlinkEscape(original: string, full: string): Promise<void> {
    let current = full;
    while (true) {
      let info;
      try {
        info = await lstat(current);
      } catch {
        if (current === this.root) return;
        current = dirname(current);
        continue;
      }
      let real: string;
      if (info.isSymbolicLink()) {
        try {
          real = await realpath(current);
        } catch {
          // A dangling link: judge where it would point.
          real = resolve(dirname(current), await readlink(current));
        }
      } else {
        real = await realpath(current);
      }
      if (!this.contains(real)) throw new PathOutsideWorkspaceError(original, "a symbolic link leads outside the workspace");
      return;
    }
  }

  private contains(absolute: string): boolean {
    const rel = relative(this.root, absolute);
    return rel === "" || (!rel.startsWith(`..${sep}`) && rel !== ".." && !isAbsolute(rel));
  }

  async readFile(path: string): Promise<string> {
    const full = await this.resolvePath(path);
    try {
      return await readFile(full, "utf8");
    } catch (error) {
      throw fileError(path, error);
    }
  }

  async writeFile(path: string, content: string): Promise<void> {
    const full = await this.resolvePath(path);
    await mkdir(dirname(full), { recursive: true });
    // The parent may have been created through a path we already checked; check again after mkdir.
    await this.assertNoSymlinkEscape(path, dirname(full));
    const temp = join(dirname(full), `.keen-${randomBytes(6).toString("hex")}.tmp`);
    try {
      await writeFile(temp, content, "utf8");
      await rename(temp, full);
    } catch (error) {
      await rm(temp, { force: true });
      throw fileError(path, error);
    }
  }

  async exists(path: string): Promise<boolean> {
    const full = await this.resolvePath(path);
    try {
      await stat(full);
      return true;
    } catch {
      return false;
    }
  }

  async listFiles(options: ListFilesOptions = {}): Promise<string[]> {
    const limit = options.limit ?? 1000;
    const listed = await this.git(["ls-files", "-z", "--cached", "--others", "--exclude-standard"]);
    const deleted = new Set((await this.git(["ls-files", "-z", "--deleted"])).split("\0"));
    const match = options.pattern ? picomatch(options.pattern, { dot: true }) : undefined;
    const files = [...new Set(listed.split("\0"))]
      .filter((file) => file && !deleted.has(file) && (!match || match(file)))
      .sort();
    return files.slice(0, limit);
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
    return runner.run(command, {
      cwd,
      root: this.root,
      // The main checkout (holding the common git dir) stays visible read-only from every fork.
      readOnlyPaths: [...new Set([dirname(this.commonDir), this.commonDir])],
      ...(options.readOnly ? { readOnly: true } : {}),
      timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      maxOutputBytes: options.maxOutputBytes ?? DEFAULT_OUTPUT_BYTES,
      ...(options.env ? { env: options.env } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
  }

  async currentBranch(): Promise<string> {
    const result = await execa("git", ["symbolic-ref", "--short", "-q", "HEAD"], { cwd: this.root, reject: false });
    return result.exitCode === 0 ? result.stdout.trim() : "HEAD";
  }

  async head(): Promise<string> {
    return (await this.git(["rev-parse", "HEAD"])).trim();
  }

  async commit(message: string, options: CommitOptions = {}): Promise<string | null> {
    await this.git(["add", "-A"]);
    const staged = await execa("git", ["diff", "--cached", "--quiet"], { cwd: this.root, reject: false });
    if (staged.exitCode === 0 && !options.allowEmpty) return null;
    await this.git(["commit", "-q", "--no-verify", ...(options.allowEmpty ? ["--allow-empty"] : []), "-m", message], await this.identityEnv(options.author));
    return this.head();
  }

  async fork(branch: string): Promise<LocalWorkspace> {
    const valid = await execa("git", ["check-ref-format", "--branch", branch], { cwd: this.root, reject: false });
    if (valid.exitCode !== 0) throw new KeenError("invalid_branch", `"${branch}" is not a valid branch name`);
    const dir = join(this.worktreesDir, branch);
    return withRepoLock(this.commonDir, async () => {
      const existing = parseWorktreeList(await this.git(["worktree", "list", "--porcelain"])).find((entry) => entry.branch === branch);
      if (existing) {
        // Take over a worktree whose owner died; leave one a live process holds as it is.
        const lease = parseLease(existing.locked ?? undefined);
        if (existing.path !== this.root && (!lease || !isLeaseLive(lease))) {
          await execa("git", ["worktree", "unlock", existing.path], { cwd: this.root, reject: false });
          await this.git(["worktree", "lock", "--reason", ownLease(), existing.path]);
        }
        return this.child(existing.path);
      }
      await mkdir(dirname(dir), { recursive: true });
      const branchExists = (await execa("git", ["rev-parse", "--verify", "-q", `refs/heads/${branch}`], { cwd: this.root, reject: false })).exitCode === 0;
      // The lock's reason is the lease: it names this process, so a later recovery pass knows when the worktree is abandoned.
      const lock = ["--lock", "--reason", ownLease()];
      await this.git(branchExists ? ["worktree", "add", "-q", ...lock, dir, branch] : ["worktree", "add", "-q", ...lock, "-b", branch, dir, "HEAD"]);
      if (branchExists) await this.restoreSalvage(dir, branch);
      return this.child(dir);
    });
  }

  /** Puts back the uncommitted work a recovery pass saved for `branch`, when the branch has not moved since. */
  private async restoreSalvage(dir: string, branch: string): Promise<void> {
    const ref = salvageRef(branch);
    const saved = await execa("git", ["rev-parse", "--verify", "-q", ref], { cwd: dir, reject: false });
    if (saved.exitCode !== 0) return;
    const parent = await execa("git", ["rev-parse", `${saved.stdout.trim()}^`], { cwd: dir, reject: false });
    const head = await execa("git", ["rev-parse", "HEAD"], { cwd: dir, reject: false });
    if (parent.stdout.trim() !== head.stdout.trim()) return; // Kept for inspection: it no longer applies cleanly.
    await execa("git", ["read-tree", "-m", "-u", "HEAD", saved.stdout.trim()], { cwd: dir });
    await execa("git", ["update-ref", "-d", ref], { cwd: dir });
  }

  private async child(dir: string): Promise<LocalWorkspace> {
    return new LocalWorkspace(await realpath(dir), this.commonDir, this.options, true, this.runner);
  }

  async merge(branch: string, message: string): Promise<MergeResult> {
    const result = await execa("git", ["merge", "--no-ff", "--no-verify", "-m", message, branch], {
      cwd: this.root,
      reject: false,
      env: await this.identityEnv(),
    });
    if (result.exitCode === 0) return { status: "merged", sha: await this.head() };
    const files = await this.conflictedFiles();
    if (files.length > 0) return { status: "conflict", files };
    await this.abortMerge();
    throw new KeenError("merge_failed", `Merging ${branch} failed: ${(result.stderr || result.stdout).trim()}`);
  }

  async commitMerge(message: string): Promise<string> {
    const left: string[] = [];
    for (const file of await this.conflictedFiles()) {
      const text = await readFile(join(this.root, file), "utf8").catch(() => "");
      if (CONFLICT_MARKER.test(text)) left.push(file);
    }
    if (left.length > 0) throw new KeenError("merge_unresolved", `Conflict markers remain in ${left.join(", ")}`);
    await this.git(["add", "-A"]);
    await this.git(["commit", "-q", "--no-verify", "-m", message], await this.identityEnv());
    return this.head();
  }

  async abortMerge(): Promise<void> {
    const inMerge = await execa("git", ["rev-parse", "-q", "--verify", "MERGE_HEAD"], { cwd: this.root, reject: false });
    if (inMerge.exitCode === 0) await this.git(["merge", "--abort"]);
  }

  async resetTo(sha: string): Promise<void> {
    await this.abortMerge();
    await this.git(["reset", "-q", "--hard", sha]);
    await this.git(["clean", "-q", "-fd"]);
  }

  async conflictedFiles(): Promise<string[]> {
    const out = await this.git(["diff", "--name-only", "--diff-filter=U", "-z"]);
    return out.split("\0").filter(Boolean);
  }

  async dispose(): Promise<void> {
    if (!this.isFork) return;
    await withRepoLock(this.commonDir, async () => {
      // Twice --force: the worktree is locked with keen's lease.
      await execa("git", ["worktree", "remove", "--force", "--force", this.root], { cwd: dirname(this.commonDir), reject: false });
      await rm(this.root, { recursive: true, force: true });
      await execa("git", ["worktree", "prune"], { cwd: dirname(this.commonDir), reject: false });
    });
  }

  private async identityEnv(author?: { name: string; email: string }): Promise<Record<string, string>> {
    let identity = author;
    if (!identity) {
      const configured = await execa("git", ["config", "user.email"], { cwd: this.root, reject: false });
      if (configured.exitCode === 0 && configured.stdout.trim()) return {};
      identity = this.options.defaultIdentity ?? DEFAULT_IDENTITY;
    }
    return gitIdentityEnv(identity);
  }

  private async git(args: string[], env: Record<string, string> = {}): Promise<string> {
    const result = await execa("git", args, { cwd: this.root, reject: false, env, stripFinalNewline: false });
    if (result.exitCode !== 0) {
      throw new KeenError("git_failed", `git ${args[0]} failed: ${(result.stderr || result.stdout).trim()}`);
    }
    return result.stdout;
  }
}

function fileError(path: string, error: unknown): KeenError {
  const code = (error as NodeJS.ErrnoException)?.code;
  if (code === "ENOENT") return new KeenError("file_not_found", `File not found: ${path}`);
  if (code === "EISDIR") return new KeenError("is_a_directory", `${path} is a folder, not a file`);
  if (code === "EACCES") return new KeenError("permission_denied", `Permission denied: ${path}`);
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
