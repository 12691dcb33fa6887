import { lstat, realpath } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { AbortedError, KeenError } from "../errors.js";
import { git, gitBytes, gitRaw, nulSeparatedNames, type GitTarget } from "./git.js";
import { readRegularFile } from "./safe-read.js";
import type { SkippedFile } from "./workspace.js";

/** Largest file keen commits on an agent's behalf, unless the workspace says otherwise. */
export const DEFAULT_MAX_FILE_BYTES = 5 * 1024 * 1024;

/** How git says it will not take a path into the index at all. */
const REFUSED_PATH = /^error: invalid path '/m;

/** Names of atomic-write temporary files (`writeFile` makes them next to their target). */
const TEMP_FILE = /^\.keen-[0-9a-f]+\.tmp$/;

/** File names that hold credentials by convention. */
const CREDENTIAL_NAMES = [
  /^\.env(\..*)?$/i,
  /\.pem$/i,
  /\.key$/i,
  /\.p12$/i,
  /\.pfx$/i,
  /^id_(rsa|dsa|ecdsa|ed25519)(\..*)?$/i,
  /^\.netrc$/i,
  /^\.pgpass$/i,
  /^\.git-credentials$/i,
];

/** Content of common secret formats: private keys, cloud and API tokens. */
const CREDENTIAL_CONTENT = [
  /-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----/,
  /\b(?:AKIA|ASIA)[0-9A-Z]{16}\b/,
  /\bsk-ant-[A-Za-z0-9_-]{20,}/,
  /\bsk-(?:proj-)?[A-Za-z0-9]{32,}/,
  /\bgh[pousr]_[A-Za-z0-9]{36,}/,
  /\bgithub_pat_[A-Za-z0-9_]{40,}/,
  /\bxox[abposr]-[A-Za-z0-9-]{10,}/,
  /\b[rs]k_live_[A-Za-z0-9]{16,}/,
  /\bAIza[0-9A-Za-z_-]{35}\b/,
  /"private_key"\s*:\s*"-----BEGIN/,
];

/** True for a keen atomic-write temporary file. */
export function isTempFile(path: string): boolean {
  return TEMP_FILE.test(basename(path));
}

/** True when the file's name marks it as a credential (`.env*`, `*.pem`, `id_rsa*`, `*.key`, …). */
export function isCredentialName(path: string): boolean {
  const name = basename(path);
  return CREDENTIAL_NAMES.some((pattern) => pattern.test(name));
}

/** True when `text` contains something shaped like a private key or an API token. */
export function containsCredential(text: string): boolean {
  return CREDENTIAL_CONTENT.some((pattern) => pattern.test(text));
}

export interface StageOptions {
  maxFileBytes: number;
  /** Extra environment for the git calls (for example a temporary `GIT_INDEX_FILE`). */
  env?: Record<string, string>;
  /** Once it fires, nothing is staged (code `aborted`). */
  signal?: AbortSignal;
  /**
   * The candidates already listed by the caller, as the NUL-separated raw names
   * `ls-files -z --modified --others --exclude-standard` would print (from a `git status` it ran
   * anyway); spares that call. Default: listed here.
   */
  listed?: Buffer;
}

export interface StageReport {
  /** Paths staged (added, modified or deleted). */
  staged: string[];
  skipped: SkippedFile[];
}

/**
 * Stages a checkout's changes the way `git add -A` would, minus what keen must never commit:
 * credential-looking files (by name or content), files over `maxFileBytes`, keen's own
 * atomic-write temp files, anything that is not a regular file or a symlink (FIFOs, sockets,
 * devices, nested repositories), names that are not valid UTF-8, and names git refuses. Symlinks are staged as links; their targets are never read.
 * Content is read through `readRegularFile`, so a file swapped for a FIFO cannot block keen.
 */
export async function stageChanges(target: GitTarget, options: StageOptions): Promise<StageReport> {
  const env = options.env ?? {};
  if (options.signal?.aborted) throw new AbortedError("Staging was called off");
  const listed = nulSeparatedNames(options.listed ?? (await gitBytes(target, ["ls-files", "-z", "--modified", "--others", "--exclude-standard"], { env })));
  const candidates = listed.names;
  const staged: string[] = [];
  /** The paths of `staged` that are gone from the work tree: their entries leave the index. */
  const removed: string[] = [];
  const stageRemoval = (path: string) => {
    staged.push(path);
    removed.push(path);
  };
  const skipped: SkippedFile[] = [];
  // Named here as a string could only be misnamed: git would not find it, and the whole add would fail.
  for (const path of new Set(listed.invalid)) skipped.push({ path, reason: "invalid_name", detail: "its name is not valid UTF-8" });
  const realDirs = new Map<string, boolean>();
  const dirIsReal = async (dir: string): Promise<boolean> => {
    let known = realDirs.get(dir);
    if (known === undefined) {
      const full = join(target.workTree, dir);
      known = (await realpath(full).catch(() => null)) === full;
      realDirs.set(dir, known);
    }
    return known;
  };

  for (const raw of new Set(candidates)) {
    const path = raw.endsWith("/") ? raw.slice(0, -1) : raw;
    const full = join(target.workTree, path);
    // A leading folder replaced by a symlink: git records the path as deleted without reading through the link.
    if (!(await dirIsReal(dirname(path) === "." ? "" : dirname(path)))) {
      stageRemoval(path);
      continue;
    }
    const info = await lstat(full).catch(() => null);
    if (!info) {
      stageRemoval(path);
      continue;
    }
    if (info.isSymbolicLink()) {
      staged.push(path); // Stored as its target text.
      continue;
    }
    if (isTempFile(path)) {
      skipped.push({ path, reason: "temp_file" });
      continue;
    }
    if (!info.isFile()) {
      skipped.push({ path, reason: "not_regular", detail: info.isDirectory() ? "a nested repository" : "not a regular file" });
      continue;
    }
    if (isCredentialName(path)) {
      skipped.push({ path, reason: "credential", detail: "its name marks it as a credential file" });
      continue;
    }
    if (info.size > options.maxFileBytes) {
      skipped.push({ path, reason: "too_large", detail: `${info.size} bytes, over the limit of ${options.maxFileBytes}` });
      continue;
    }
    let content: Buffer;
    try {
      content = await readRegularFile(full, { maxBytes: options.maxFileBytes });
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code === "file_too_large") skipped.push({ path, reason: "too_large", detail: `over the limit of ${options.maxFileBytes} bytes` });
      else if (code === "ENOENT") stageRemoval(path);
      else skipped.push({ path, reason: "not_regular", detail: error instanceof Error ? error.message : String(error) });
      continue;
    }
    if (containsCredential(content.toString("latin1"))) {
      skipped.push({ path, reason: "credential", detail: "its content looks like a private key or token" });
      continue;
    }
    staged.push(path);
  }

  if (staged.length === 0) return { staged, skipped };
  if (options.signal?.aborted) throw new AbortedError("Staging was called off");
  // In a sparse worktree, files written outside its patterns (by a command) are committed too,
  // and so is their removal. `add --sparse` finds no match for a file gone from outside the
  // patterns (git matches the index only inside them) and then stages nothing: gone files leave
  // the index by name instead, which neither the patterns nor the work tree can refuse.
  let adding = staged;
  if (target.sparse && removed.length > 0) {
    await git(target, ["update-index", "-z", "--force-remove", "--stdin"], { env, input: removed.map((path) => `${path}\0`).join("") });
    const gone = new Set(removed);
    adding = staged.filter((path) => !gone.has(path));
    if (adding.length === 0) return { staged, skipped };
  }
  const args = ["add", "-A", ...(target.sparse ? ["--sparse"] : []), "--pathspec-from-file=-", "--pathspec-file-nul"];
  const all = await gitRaw(target, args, { env, input: adding.join("\0") });
  if (all.exitCode === 0) return { staged, skipped };
  // Any other failure (a lock, a broken repository) is reported as such, with git's own wording.
  if (!REFUSED_PATH.test(String(all.stderr))) await git(target, args, { env, input: adding.join("\0") });
  // git refuses some names outright (`.GIT/…`, `.git.`, `GIT~1/…`, a `.gitmodules` link) and then
  // adds nothing. One at a time, so a refused name costs only itself, never the whole commit.
  const added: string[] = adding === staged ? [] : [...removed];
  for (const path of adding) {
    const one = await gitRaw(target, args, { env, input: path });
    if (one.exitCode === 0) {
      added.push(path);
    } else if (REFUSED_PATH.test(String(one.stderr))) {
      skipped.push({ path, reason: "invalid_name", detail: `git refuses it: ${String(one.stderr).trim().split("\n")[0]}` });
    } else {
      await git(target, args, { env, input: path });
    }
  }
  return { staged: added, skipped };
}

/** True when `file` is one of a sparse worktree's `paths` or lies below one. */
export function isInsidePaths(file: string, paths: readonly string[]): boolean {
  return paths.some((p) => file === p || file.startsWith(`${p}/`));
}

/**
 * For a temporary index read from a tree (HEAD's) for a sparse worktree: marks the files outside
 * its `paths` skip-worktree, as the worktree's own index marks them, so staging does not take
 * their absence from the work tree for deletions.
 * `held`: the files the worktree's own index holds checked out, when it could be read; those are
 * not marked, so the removal of a file outside the paths that the worktree held (one a command
 * wrote and a commit took) is staged like any other.
 */
export async function skipOutsidePaths(target: GitTarget, env: Record<string, string>, paths: readonly string[], held?: ReadonlySet<string>): Promise<void> {
  const outside = (await git(target, ["ls-files", "-z"], { env })).split("\0").filter((file) => file !== "" && !isInsidePaths(file, paths) && !held?.has(file));
  if (outside.length > 0) await git(target, ["update-index", "-z", "--skip-worktree", "--stdin"], { env, input: outside.map((file) => `${file}\0`).join("") });
}

/** From a `ls-files -t -z` listing of an index: the files it marks skip-worktree (tag `S`, not checked out) or not. */
export function filesBySkipWorktree(listing: string, skipped: boolean): Set<string> {
  return new Set(
    listing
      .split("\0")
      .filter((line) => line.length > 2 && line.startsWith("S ") === skipped)
      .map((line) => line.slice(2)),
  );
}

/** Refuses an option combination early, with a coded error. */
export function invalidOption(message: string): KeenError {
  return new KeenError("invalid_option", message);
}
