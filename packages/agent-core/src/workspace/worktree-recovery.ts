import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { lstat, readdir, readFile, realpath, rm, rmdir, stat } from "node:fs/promises";
import { hostname } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { DEFAULT_MAX_FILE_BYTES, isTempFile, stageChanges } from "./commit-filter.js";
import { gitRaw, oneLine, type GitTarget } from "./git.js";
import { isInside } from "./is-inside.js";

/**
 * Who holds a keen worktree: written as the reason of git's own worktree lock
 * (`<git dir>/worktrees/<name>/locked`), so `git worktree prune` never drops a worktree a live
 * run uses, and a later run can tell a crashed owner from a live one.
 */
export interface WorktreeLease {
  pid: number;
  /** The process start time from /proc (clock ticks since boot), so a reused pid is not mistaken for the owner. */
  start: string | null;
  host: string;
}

const LEASE_PREFIX = "keen lease";

/** The lease text for this process. */
export function ownLease(): string {
  return `${LEASE_PREFIX} pid=${process.pid} start=${processStart(process.pid) ?? "-"} host=${hostName()}`;
}

export function parseLease(reason: string | undefined): WorktreeLease | undefined {
  const match = reason?.trim().match(/^keen lease pid=(\d+) start=(\S+) host=(\S+)$/);
  if (!match) return undefined;
  return { pid: Number(match[1]), start: match[2] === "-" ? null : match[2]!, host: match[3]! };
}

/** True when the lease's owner may still be running (unknown hosts count as running). */
export function isLeaseLive(lease: WorktreeLease): boolean {
  if (lease.host !== hostName()) return true;
  if (!isProcessAlive(lease.pid)) return false;
  if (lease.start === null) return true;
  const start = processStart(lease.pid);
  return start === null || start === lease.start;
}

/** The host name, or "-" where none is set (containers). */
function hostName(): string {
  return hostname().replace(/\s+/g, "") || "-";
}

function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Field 22 of /proc/<pid>/stat; null where /proc is not available. */
function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
  } catch {
    return null;
  }
}

export interface WorktreeEntry {
  path: string;
  branch: string | null;
  locked: string | null;
}

/** Parses `git worktree list --porcelain` (lines end with `separator`: "\0" for `-z`, so paths may hold newlines). */
export function parseWorktreeList(text: string, separator = "\n"): WorktreeEntry[] {
  const entries: WorktreeEntry[] = [];
  let current: WorktreeEntry | undefined;
  for (const line of text.split(separator)) {
    if (line.startsWith("worktree ")) {
      current = { path: line.slice("worktree ".length), branch: null, locked: null };
      entries.push(current);
    } else if (current && line.startsWith("branch refs/heads/")) {
      current.branch = line.slice("branch refs/heads/".length);
    } else if (current && (line === "locked" || line.startsWith("locked "))) {
      current.locked = line.slice("locked".length).trim();
    }
  }
  return entries;
}

/** What a recovery pass found and did. */
export interface RecoveryReport {
  /** Worktree folders removed because the process that made them is gone. */
  removedWorktrees: string[];
  /** Branches whose uncommitted work was saved under `refs/keen/salvage/<branch>` before removal. */
  salvagedBranches: string[];
  /** Git lock files removed because no git process held them. */
  removedLocks: string[];
}

export interface RecoveryOptions {
  commonDir: string;
  /** The main checkout (git commands run there). */
  root: string;
  /** The folder keen puts worktrees in. */
  worktreesDir: string;
  /** Lock files younger than this are left alone. */
  staleLockMs: number;
  identityEnv: Record<string, string>;
}

/** Where uncommitted work of a crashed worktree is kept until the branch is forked again. */
export function salvageRef(branch: string): string {
  return `refs/keen/salvage/${branch}`;
}

/**
 * Cleans up after keen processes that died: removes their worktrees (saving uncommitted work
 * under `refs/keen/salvage/<branch>` first), prunes git's worktree list, and deletes lock files
 * no git process holds. Worktrees whose owner is alive are never touched.
 */
export async function recoverWorktrees(options: RecoveryOptions): Promise<RecoveryReport> {
  const report: RecoveryReport = { removedWorktrees: [], salvagedBranches: [], removedLocks: [] };
  const main: GitTarget = { gitDir: options.commonDir, workTree: options.root };
  const git = (args: string[]) => gitRaw(main, args);
  // Git keeps one folder per linked worktree under <common dir>/worktrees (and removes the folder
  // with the last one): without any, there is nothing to list or prune.
  const registered = (await readdir(join(options.commonDir, "worktrees")).catch(() => [] as string[])).length > 0;
  const listed = registered ? parseWorktreeList(String((await git(["worktree", "list", "--porcelain", "-z"])).stdout), "\0") : [];
  const keep = new Set<string>();

  for (const entry of listed) {
    if (!isInside(options.worktreesDir, entry.path)) continue;
    if (!(await isStale(entry, options))) {
      keep.add(entry.path);
      continue;
    }
    const gitDir = await worktreeGitDir(options.commonDir, entry.path);
    if (gitDir) await rm(join(gitDir, "index.lock"), { force: true });
    // Keen's own half-written temp files are never work worth keeping.
    await removeTempFiles(entry.path);
    if (entry.branch && gitDir && (await exists(entry.path))) {
      const target = { gitDir, workTree: entry.path };
      if (await salvage(target, entry.branch, options.identityEnv)) report.salvagedBranches.push(entry.branch);
    }
    if (gitDir) await rm(join(gitDir, "locked"), { force: true });
    await git(["worktree", "remove", "--force", "--force", entry.path]);
    await rm(entry.path, { recursive: true, force: true });
    report.removedWorktrees.push(entry.path);
  }

  // Folders left behind by a worktree that never got registered, or whose registration was lost.
  await removeOrphanFolders(options.worktreesDir, keep, report);
  if (registered) await git(["worktree", "prune"]);
  report.removedLocks = await removeStaleLocks(options, [...keep]);
  return report;
}

async function isStale(entry: WorktreeEntry, options: RecoveryOptions): Promise<boolean> {
  const lease = parseLease(entry.locked ?? undefined);
  if (lease) return !isLeaseLive(lease);
  if (entry.locked === null) return true;
  // Git locks a worktree with "initializing" while it creates it; anything else is a lock someone meant.
  if (entry.locked !== "initializing") return false;
  const gitDir = await worktreeGitDir(options.commonDir, entry.path);
  const info = gitDir ? await stat(join(gitDir, "locked")).catch(() => null) : null;
  return info !== null && Date.now() - info.mtimeMs > options.staleLockMs;
}

/**
 * The per-worktree git dir (`<common>/worktrees/<name>`) of the worktree at `path`, found through
 * the `gitdir` files git keeps in the common dir, never through the worktree's own `.git` file
 * (which whoever works in the worktree can rewrite).
 */
export async function worktreeGitDir(commonDir: string, path: string): Promise<string | undefined> {
  const worktrees = join(commonDir, "worktrees");
  const wanted = await realpath(path).catch(() => resolve(path));
  for (const name of await readdir(worktrees).catch(() => [] as string[])) {
    const gitdirFile = await readFile(join(worktrees, name, "gitdir"), "utf8").catch(() => null);
    if (gitdirFile === null) continue;
    const listed = dirname(oneLine(gitdirFile));
    if (listed === wanted || listed === resolve(path) || (await realpath(listed).catch(() => null)) === wanted) return join(worktrees, name);
  }
  return undefined;
}

/** Deletes keen's atomic-write temp files (`.keen-*.tmp`) anywhere in a checkout, without following links. */
export async function removeTempFiles(root: string): Promise<void> {
  for (const entry of await readdir(root, { withFileTypes: true }).catch(() => [])) {
    if (entry.name === ".git") continue;
    const path = join(root, entry.name);
    if (entry.isDirectory()) await removeTempFiles(path);
    else if (entry.isFile() && isTempFile(entry.name)) await rm(path, { force: true });
  }
}

/**
 * Records uncommitted changes (tracked and untracked) of a worktree as a commit under
 * `refs/keen/salvage/<branch>`, leaving out what `commit` would (credentials, oversized and
 * temp files) and any merge the process left in progress, through git calls that never read the
 * worktree's `.git` file.
 */
async function salvage(target: GitTarget, branch: string, identityEnv: Record<string, string>): Promise<boolean> {
  // A merge the dead process left half done is not the agent's work: staging it would save its
  // conflict markers as if they were edits. Roll it back first, keeping the agent's own changes.
  const merging = await gitRaw(target, ["rev-parse", "-q", "--verify", "MERGE_HEAD"]);
  if (merging.exitCode === 0) await gitRaw(target, ["merge", "--abort"]);
  if (String((await gitRaw(target, ["ls-files", "-u", "-z"])).stdout) !== "") {
    if ((await gitRaw(target, ["reset", "-q", "--merge"])).exitCode !== 0) return false;
    if (String((await gitRaw(target, ["ls-files", "-u", "-z"])).stdout) !== "") return false;
  }
  try {
    await stageChanges(target, { maxFileBytes: DEFAULT_MAX_FILE_BYTES });
  } catch {
    return false;
  }
  const value = async (args: string[], env: Record<string, string> = {}, input?: string) => {
    const result = await gitRaw(target, args, { env, ...(input !== undefined ? { input } : {}) });
    return result.exitCode === 0 ? String(result.stdout).trim() : "";
  };
  const tree = await value(["write-tree"]);
  const head = await value(["rev-parse", "HEAD"]);
  const headTree = await value(["rev-parse", "HEAD^{tree}"]);
  if (!tree || !head || tree === headTree) return false;
  const commit = await value(["commit-tree", tree, "-p", head, "-F", "-"], identityEnv, `keen: uncommitted work of ${branch}, saved after its process died`);
  if (!commit) return false;
  return (await gitRaw(target, ["update-ref", salvageRef(branch), commit])).exitCode === 0;
}

async function removeOrphanFolders(dir: string, keep: Set<string>, report: RecoveryReport): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const path = join(dir, name);
    const info = await lstat(path).catch(() => null);
    if (!info?.isDirectory() || keep.has(path)) continue;
    if ([...keep].some((kept) => isInside(path, kept))) {
      await removeOrphanFolders(path, keep, report);
      continue;
    }
    if (await exists(join(path, ".git"))) report.removedWorktrees.push(path);
    else if (!(await containsWorktree(path))) {
      await rmdir(path).catch(() => {});
      continue;
    }
    await rm(path, { recursive: true, force: true });
  }
}

async function containsWorktree(dir: string): Promise<boolean> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const path = join(dir, name);
    if (name === ".git") return true;
    if ((await lstat(path).catch(() => null))?.isDirectory() && (await containsWorktree(path))) return true;
  }
  return false;
}

/** Locks git takes in a worktree's own git dir; the common dir has them too (for the main checkout) and more. */
const WORKTREE_LOCKS = ["index.lock", "HEAD.lock", "ORIG_HEAD.lock", "MERGE_HEAD.lock"];
const TOP_LEVEL_LOCKS = [...WORKTREE_LOCKS, "config.lock", "packed-refs.lock", "shallow.lock"];

/**
 * Git lock files (at least `staleLockMs` old) when no git process works in this repository. Git
 * deletes its locks when it exits, even on errors; one that existed before a scan of /proc found
 * no git process here was left by a killed one, so it goes at once. A lock replaced between the
 * look and the removal (another inode or time) is left alone.
 */
async function removeStaleLocks(options: RecoveryOptions, worktrees: string[]): Promise<string[]> {
  // Looked up all at once: every open of a repository runs this, before its run can start.
  const [worktreeNames, refLocks, logLocks] = await Promise.all([
    readdir(join(options.commonDir, "worktrees")).catch(() => [] as string[]),
    findLocks(join(options.commonDir, "refs")),
    findLocks(join(options.commonDir, "logs")),
  ]);
  const candidates: string[] = TOP_LEVEL_LOCKS.map((name) => join(options.commonDir, name));
  for (const name of worktreeNames) {
    for (const lock of WORKTREE_LOCKS) candidates.push(join(options.commonDir, "worktrees", name, lock));
  }
  candidates.push(...refLocks, ...logLocks);
  const infos = await Promise.all(candidates.map((path) => stat(path).catch(() => null)));
  const now = Date.now();
  const old: Array<{ path: string; ino: number; mtimeMs: number }> = [];
  candidates.forEach((path, i) => {
    const info = infos[i];
    if (info && now - info.mtimeMs >= options.staleLockMs) old.push({ path, ino: info.ino, mtimeMs: info.mtimeMs });
  });
  if (old.length === 0) return [];
  const places = [options.root, options.commonDir, options.worktreesDir, ...worktrees];
  if (liveGitProcessIn(places)) return [];
  const removed: string[] = [];
  for (const lock of old) {
    const info = await stat(lock.path).catch(() => null);
    if (!info || info.ino !== lock.ino || info.mtimeMs !== lock.mtimeMs) continue;
    await rm(lock.path, { force: true });
    removed.push(lock.path);
  }
  return removed;
}

/** Lock files anywhere below `dir`; its folders are read in parallel. */
async function findLocks(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  const nested = await Promise.all(entries.filter((entry) => entry.isDirectory()).map((entry) => findLocks(join(dir, entry.name))));
  const own = entries.filter((entry) => !entry.isDirectory() && entry.name.endsWith(".lock")).map((entry) => join(dir, entry.name));
  return [...own, ...nested.flat()];
}

/**
 * True when a running git process has its working directory in one of `places`, or when that
 * cannot be known (no /proc, or a process we may not inspect): then locks are left alone.
 */
function liveGitProcessIn(places: string[]): boolean {
  let pids: string[];
  try {
    pids = readdirSync("/proc").filter((name) => /^\d+$/.test(name));
  } catch {
    return true;
  }
  for (const pid of pids) {
    let command: string;
    try {
      command = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0] ?? "";
    } catch {
      continue; // Exited while we looked.
    }
    if (basename(command) !== "git" && !basename(command).startsWith("git-")) continue;
    let cwd: string;
    try {
      cwd = readlinkSync(`/proc/${pid}/cwd`);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") continue;
      return true;
    }
    if (places.some((place) => cwd === place || isInside(place, cwd))) return true;
  }
  return false;
}

async function exists(path: string): Promise<boolean> {
  return (await lstat(path).catch(() => null)) !== null;
}
