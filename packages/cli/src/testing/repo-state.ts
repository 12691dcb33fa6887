/** Everything of a user's repository a keen run must leave alone, captured for before/after comparison. */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { join, relative } from "node:path";

const sha = (bytes: Buffer | string) => createHash("sha256").update(bytes).digest("hex");
const run = (dir: string, args: string[]) =>
  execFileSync("git", args, { cwd: dir, encoding: "utf8", env: { ...process.env, GIT_OPTIONAL_LOCKS: "0" }, stdio: ["ignore", "pipe", "pipe"] });

/** Every file, folder and link below `root` (tracked, untracked and ignored), without the top `.git`. */
function treeOf(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  // Names as bytes: a name that is not UTF-8 is still a file of the user's.
  const walk = (folder: Buffer) => {
    for (const entry of readdirSync(folder, { withFileTypes: true, encoding: "buffer" })) {
      const path = Buffer.concat([folder, Buffer.from("/"), entry.name]);
      const rel = path.subarray(root.length + 1).toString("latin1");
      if (rel === ".git") continue;
      const info = lstatSync(path);
      const mode = (info.mode & 0o7777).toString(8);
      if (info.isSymbolicLink()) out[rel] = `link ${readlinkSync(path, "buffer").toString("latin1")}`;
      else if (info.isDirectory()) {
        out[rel] = `dir ${mode}`;
        walk(path);
      } else out[rel] = `file ${mode} ${sha(readFileSync(path))} ${info.mtimeMs}`;
    }
  };
  walk(Buffer.from(root));
  return out;
}

/** Files in a git dir that say what the user's checkout is doing. */
const GIT_DIR_FILES = ["HEAD", "ORIG_HEAD", "FETCH_HEAD", "MERGE_HEAD", "MERGE_MSG", "MERGE_MODE", "CHERRY_PICK_HEAD", "REVERT_HEAD", "AUTO_MERGE", "index", "config", "config.worktree", "shallow", "info/sparse-checkout", "info/exclude", "logs/HEAD", "logs/refs/stash", "commondir", "gitdir"];

export interface RepoState {
  files: Record<string, string>;
  gitDir: Record<string, string>;
  status: string;
  stash: string;
  refs: string[];
  worktrees: string;
  locks: string[];
}

/**
 * The state of the checkout at `dir`. The index is hashed before `git status` runs (status with
 * optional locks off never writes it anyway).
 */
export function repoState(dir: string): RepoState {
  const gitDir = run(dir, ["rev-parse", "--absolute-git-dir"]).trim();
  const commonDir = run(dir, ["rev-parse", "--path-format=absolute", "--git-common-dir"]).trim();
  const files: Record<string, string> = {};
  for (const name of GIT_DIR_FILES) {
    for (const [where, base] of [["own", gitDir], ["common", commonDir]] as const) {
      const path = join(base, name);
      if (existsSync(path) && lstatSync(path).isFile()) files[`${where}:${name}`] = `${sha(readFileSync(path))} ${lstatSync(path).mtimeMs}`;
    }
  }
  for (const folder of ["rebase-merge", "rebase-apply", "sequencer"]) {
    const path = join(gitDir, folder);
    if (existsSync(path)) files[folder] = JSON.stringify(treeOf(path));
  }
  const bare = run(dir, ["rev-parse", "--is-bare-repository"]).trim() === "true";
  return {
    files: bare ? {} : treeOf(run(dir, ["rev-parse", "--show-toplevel"]).trim()),
    gitDir: files,
    status: bare ? "" : run(dir, ["status", "--porcelain=v2", "--branch", "--untracked-files=all", "--ignored=matching", "-z"]),
    stash: bare ? "" : run(dir, ["stash", "list"]),
    refs: run(dir, ["for-each-ref", "--format=%(refname) %(objectname) %(symref)"]).split("\n").filter(Boolean),
    worktrees: run(dir, ["worktree", "list", "--porcelain"]),
    locks: findLocks(commonDir),
  };
}

/** `*.lock` files anywhere in the common git dir (keen's own worktrees folder included). */
function findLocks(commonDir: string): string[] {
  const out: string[] = [];
  const walk = (folder: string) => {
    for (const entry of readdirSync(folder, { withFileTypes: true })) {
      const path = join(folder, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith(".lock") || entry.name === "locked") out.push(relative(commonDir, path));
    }
  };
  walk(commonDir);
  return out.sort();
}

/** Refs that are keen's own: its run branches and everything under refs/keen/. */
export const isKeenRef = (line: string) => /^refs\/heads\/keen\/[0-9a-f]{8}(-agents\/\S+)? /.test(line) || line.startsWith("refs/keen/");

/**
 * What changed between two states, leaving out keen's own refs; empty when the run left the user's
 * repository alone. Keen refs added are listed separately so a test can check they are the run's.
 */
export function stateDiff(before: RepoState, after: RepoState): { changed: string[]; keenRefsAdded: string[] } {
  const changed: string[] = [];
  const compareMaps = (label: string, a: Record<string, string>, b: Record<string, string>) => {
    for (const key of new Set([...Object.keys(a), ...Object.keys(b)])) if (a[key] !== b[key]) changed.push(`${label} ${key}: ${a[key] ?? "(none)"} -> ${b[key] ?? "(none)"}`);
  };
  compareMaps("file", before.files, after.files);
  compareMaps("git", before.gitDir, after.gitDir);
  for (const key of ["status", "stash", "worktrees"] as const) if (before[key] !== after[key]) changed.push(`${key}: ${JSON.stringify(before[key])} -> ${JSON.stringify(after[key])}`);
  const userRefs = (s: RepoState) => s.refs.filter((line) => !isKeenRef(line));
  if (JSON.stringify(userRefs(before)) !== JSON.stringify(userRefs(after))) changed.push(`refs: ${userRefs(before).join(", ")} -> ${userRefs(after).join(", ")}`);
  const newLocks = after.locks.filter((lock) => !before.locks.includes(lock));
  if (newLocks.length) changed.push(`locks left: ${newLocks.join(", ")}`);
  const keenRefsAdded = after.refs.filter((line) => isKeenRef(line) && !before.refs.includes(line));
  return { changed, keenRefsAdded };
}
