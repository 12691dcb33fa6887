import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { lstat, readdir, readFile, rm, rmdir, stat } from "node:fs/promises";
import { hostname } from "node:os";
import { basename, join } from "node:path";
import { execa } from "execa";
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

/** Parses `git worktree list --porcelain`. */
export function parseWorktreeList(text: string): WorktreeEntry[] {
  const entries: WorktreeEntry[] = [];
  let current: WorktreeEntry | undefined;
  for (const line of text.split("\n")) {
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
  const git = (args: string[], cwd = options.root, env: Record<string, string> = {}) => execa("git", args, { cwd, reject: false, env });
  const listed = parseWorktreeList((await git(["worktree", "list", "--porcelain"])).stdout);
  const keep = new Set<string>();

  for (const entry of listed) {
    if (!isInside(options.worktreesDir, entry.path)) continue;
    if (!(await isStale(entry, options))) {
      keep.add(entry.path);
      continue;
    }
    const gitDir = await worktreeGitDir(options.commonDir, entry.path);
    if (gitDir) await rm(join(gitDir, "index.lock"), { force: true });
    if (entry.branch && (await exists(join(entry.path, ".git")))) {
      if (await salvage(entry.path, entry.branch, options.identityEnv, git)) report.salvagedBranches.push(entry.branch);
    }
    if (gitDir) await rm(join(gitDir, "locked"), { force: true });
    await git(["worktree", "remove", "--force", "--force", entry.path]);
    await rm(entry.path, { recursive: true, force: true });
    report.removedWorktrees.push(entry.path);
  }

  // Folders left behind by a worktree that never got registered, or whose registration was lost.
  await removeOrphanFolders(options.worktreesDir, keep, report);
  await git(["worktree", "prune"]);
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

/** The per-worktree git dir (`<common>/worktrees/<name>`) of the worktree at `path`. */
async function worktreeGitDir(commonDir: string, path: string): Promise<string | undefined> {
  const worktrees = join(commonDir, "worktrees");
  for (const name of await readdir(worktrees).catch(() => [] as string[])) {
    const gitdirFile = await readFile(join(worktrees, name, "gitdir"), "utf8").catch(() => "");
    if (gitdirFile.trim() === join(path, ".git")) return join(worktrees, name);
  }
  return undefined;
}

/** Records uncommitted changes (tracked and untracked) of a worktree as a commit under `refs/keen/salvage/<branch>`. */
async function salvage(
  path: string,
  branch: string,
  identityEnv: Record<string, string>,
  git: (args: string[], cwd?: string, env?: Record<string, string>) => Promise<{ exitCode?: number; stdout: string }>,
): Promise<boolean> {
  if ((await git(["add", "-A"], path)).exitCode !== 0) return false;
  const tree = (await git(["write-tree"], path)).stdout.trim();
  const head = (await git(["rev-parse", "HEAD"], path)).stdout.trim();
  const headTree = (await git(["rev-parse", "HEAD^{tree}"], path)).stdout.trim();
  if (!tree || !head || tree === headTree) return false;
  const commit = await git(["commit-tree", tree, "-p", head, "-m", `keen: uncommitted work of ${branch}, saved after its process died`], path, identityEnv);
  if (commit.exitCode !== 0) return false;
  return (await git(["update-ref", salvageRef(branch), commit.stdout.trim()], path)).exitCode === 0;
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
 * Git lock files older than the threshold, when no git process works in this repository. Git
 * deletes its locks when it exits, even on errors; one left behind means a git process was killed.
 */
async function removeStaleLocks(options: RecoveryOptions, worktrees: string[]): Promise<string[]> {
  const candidates: string[] = TOP_LEVEL_LOCKS.map((name) => join(options.commonDir, name));
  for (const name of await readdir(join(options.commonDir, "worktrees")).catch(() => [] as string[])) {
    for (const lock of WORKTREE_LOCKS) candidates.push(join(options.commonDir, "worktrees", name, lock));
  }
  candidates.push(...(await findLocks(join(options.commonDir, "refs"))), ...(await findLocks(join(options.commonDir, "logs"))));
  const now = Date.now();
  const old: string[] = [];
  for (const path of candidates) {
    const info = await stat(path).catch(() => null);
    if (info && now - info.mtimeMs >= options.staleLockMs) old.push(path);
  }
  if (old.length === 0) return [];
  const places = [options.root, options.commonDir, options.worktreesDir, ...worktrees];
  if (liveGitProcessIn(places)) return [];
  for (const path of old) await rm(path, { force: true });
  return old;
}

async function findLocks(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...(await findLocks(path)));
    else if (entry.name.endsWith(".lock")) found.push(path);
  }
  return found;
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
