import { spawn } from "node:child_process";
import { KeenError } from "../errors.js";
import { launchGit, launcherWanted } from "./git-launcher.js";

/**
 * Where one git call works: the git dir and work tree are always passed explicitly, so git never
 * reads a checkout's `.git` file (a sandboxed agent can write that file and point it at a
 * repository of its own, with hooks and an fsmonitor command that would then run on the host).
 */
export interface GitTarget {
  /** The per-worktree git dir (`<common>/worktrees/<name>`), or the common dir for a main checkout. */
  gitDir: string;
  /** The checkout's root. */
  workTree: string;
  /**
   * A sparse worktree (patterns in its git dir's `info/sparse-checkout`): every git call on it
   * sets `core.sparseCheckout` itself, so the repository's shared config is never changed.
   */
  sparse?: boolean;
}

/** The settings of a git call on a sparse worktree: its own patterns, gitignore-style (not cone). */
const SPARSE = ["-c", "core.sparseCheckout=true", "-c", "core.sparseCheckoutCone=false"];

/**
 * Settings on every git call keen makes: no hooks, no fsmonitor command, no untracked cache
 * (it is written into the index), and nothing that reaches out to the network. The repository's
 * config lives in the common git dir, which the sandbox mounts read-only, so no agent can add a
 * filter or diff driver either. A nested repository in the worktree is the agent's, config
 * included, so git never enters one: no recursion into submodules (a user's
 * `submodule.recurse=true` would make `reset`/`checkout` run git with the agent's filters there)
 * and no look into them from `diff` or `status`. Paths that are `.git` on macOS or Windows
 * (`.g\u200cit`, `GIT~1`) are refused whatever the host, so no commit of keen's carries one.
 * A file counts as unchanged only when all of its stat data matches, ctime included, which no
 * process can set back: a user's `core.checkStat=minimal`, `core.trustctime=false` or
 * `core.ignoreStat=true` would let an agent hide a rewrite (same size, modification time put back)
 * from keen's commits and checkpoints, and from the checkout that hands a kept worktree to the next fork.
 * No `git maintenance run --auto` after keen's commits and merges: one more process each time, and
 * a repack of the user's repository in the middle of a run (the user's own git commands still run it).
 * No auto-stash around a merge (a user's `merge.autoStash=true`): a merge that local changes are in
 * the way of fails and changes nothing, instead of stashing them and putting them back with conflicts.
 */
const HARDENING = [
  "-c", "core.hooksPath=/dev/null",
  "-c", "core.fsmonitor=false",
  "-c", "core.untrackedCache=false",
  "-c", "protocol.allow=never",
  "-c", "submodule.recurse=false",
  "-c", "diff.ignoreSubmodules=all",
  "-c", "core.protectHFS=true",
  "-c", "core.protectNTFS=true",
  "-c", "core.checkStat=default",
  "-c", "core.trustctime=true",
  "-c", "core.ignoreStat=false",
  "-c", "maintenance.auto=false",
  "-c", "merge.autoStash=false",
];

/**
 * The variables that tie a git process to one repository (`git rev-parse --local-env-vars`). An
 * inherited one (keen started from a git hook, say) must not redirect keen's git calls.
 */
const REPOSITORY_VARIABLES = new Set([
  "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT", "GIT_OBJECT_DIRECTORY",
  "GIT_DIR", "GIT_WORK_TREE", "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE", "GIT_INDEX_FILE", "GIT_NO_REPLACE_OBJECTS",
  "GIT_REPLACE_REF_BASE", "GIT_PREFIX", "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE", "GIT_COMMON_DIR",
]);

/** keen's own environment without repository-bound git variables. */
export function withoutRepositoryVariables(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && !REPOSITORY_VARIABLES.has(name)) env[name] = value;
  }
  return env;
}

/**
 * The environment of a keen git call: the explicit target, plus `GIT_OPTIONAL_LOCKS=0` so that
 * read-only commands (`status`, `diff`) never refresh and rewrite the index of the user's
 * checkout, and literal pathspecs (a file named `*` means that file).
 */
export function gitEnv(target: GitTarget, extra: Record<string, string> = {}): Record<string, string> {
  return {
    ...withoutRepositoryVariables(),
    GIT_DIR: target.gitDir,
    GIT_WORK_TREE: target.workTree,
    GIT_OPTIONAL_LOCKS: "0",
    GIT_TERMINAL_PROMPT: "0",
    // Never wait for a person: no editor, no pager.
    GIT_EDITOR: ":",
    GIT_PAGER: "cat",
    GIT_LITERAL_PATHSPECS: "1",
    ...extra,
  };
}

export interface GitCallOptions {
  env?: Record<string, string>;
  /**
   * Written to git's stdin. A promise lets git start before its input is known (its start-up
   * then overlaps the work that produces the input); stdin closes once it resolves.
   */
  input?: string | Promise<string>;
  /** Working directory (inside the work tree). Default: the work tree root. */
  cwd?: string;
}

/** What one git call ended with; `exitCode` is undefined when git could not run or was stopped by a signal. */
export interface GitResult<Output = string> {
  exitCode: number | undefined;
  stdout: Output;
  stderr: string;
}

/** Most output kept from one git call (stdout and stderr together); more ends the call as failed. */
const MAX_OUTPUT_BYTES = 100 * 1024 * 1024;

/**
 * Runs one hardened git call and collects its output: through the launcher's resident shell
 * (`git-launcher.ts`) where it can take the call, else with `spawn` directly. A promised input is
 * awaited before the launcher starts git: a fork of keen's own process to start git earlier costs
 * its main thread far more than git's start-up takes.
 */
function runGit(target: GitTarget, args: string[], options: GitCallOptions): Promise<GitResult<Buffer>> {
  const { input } = options;
  if (input !== undefined && typeof input !== "string" && launcherWanted()) {
    // A rejected input closes stdin with nothing written, as with spawn.
    return input.then(
      (text) => runGit(target, args, { ...options, input: text }),
      () => runGit(target, args, { ...options, input: "" }),
    );
  }
  const fullArgs = [...HARDENING, ...(target.sparse ? SPARSE : []), ...args];
  const cwd = options.cwd ?? target.workTree;
  const env = gitEnv(target, options.env);
  const launched =
    typeof input === "object"
      ? undefined
      : launchGit({ args: fullArgs, cwd, env, input, maxOutput: MAX_OUTPUT_BYTES, command: args[0] ?? "" }, withoutRepositoryVariables);
  return launched ?? spawnGit(fullArgs, cwd, env, input, args[0] ?? "");
}

/**
 * A git call that finds its repository from `cwd` as a person's git would (no `GIT_DIR`, no
 * hardening beyond a disabled fsmonitor command): how `LocalWorkspace.open` asks where a
 * checkout's root and git dirs are. Through the launcher like every other call, so a workspace's
 * first git call also starts the launcher's shell, while keen's process is still small.
 */
export async function gitDiscover(cwd: string, args: string[]): Promise<GitResult> {
  const fullArgs = ["-c", "core.fsmonitor=false", ...args];
  const env = withoutRepositoryVariables();
  const result = await (launchGit({ args: fullArgs, cwd, env, maxOutput: MAX_OUTPUT_BYTES, command: args[0] ?? "" }, withoutRepositoryVariables) ??
    spawnGit(fullArgs, cwd, env, undefined, args[0] ?? ""));
  return { ...result, stdout: result.stdout.toString("utf8") };
}

/**
 * Starts one git process with `child_process.spawn` and collects its output: the way when the
 * launcher cannot take a call. `spawn` directly: execa's stream machinery cost about 2 ms of the
 * main thread per call (`git rev-parse HEAD`: 3 ms of CPU with execa, 1 ms without).
 */
function spawnGit(args: string[], cwd: string, env: Record<string, string>, input: string | Promise<string> | undefined, command: string): Promise<GitResult<Buffer>> {
  return new Promise((settle) => {
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let size = 0;
    let failure: string | undefined;
    let settled = false;
    const finish = (exitCode: number | undefined) => {
      if (settled) return;
      settled = true;
      const errorText = Buffer.concat(stderr).toString("utf8");
      settle({ exitCode: failure === undefined ? exitCode : undefined, stdout: Buffer.concat(stdout), stderr: failure === undefined ? errorText : `${errorText}${failure}` });
    };
    const child = spawn("git", args, { cwd, env, stdio: [input !== undefined ? "pipe" : "ignore", "pipe", "pipe"] });
    const collect = (into: Buffer[]) => (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_OUTPUT_BYTES) {
        failure ??= `git ${command} wrote more than ${MAX_OUTPUT_BYTES} bytes`;
        child.kill();
        return;
      }
      into.push(chunk);
    };
    child.stdout!.on("data", collect(stdout));
    child.stderr!.on("data", collect(stderr));
    child.on("error", (error) => {
      failure ??= error.message;
      // Never started (git missing, a bad cwd): no close follows.
      if (child.pid === undefined) finish(undefined);
    });
    child.on("close", (code) => finish(code ?? undefined));
    if (input !== undefined) {
      // git may exit before reading all of it (a failed command): that is its answer, not an error here.
      child.stdin!.on("error", () => {});
      const stdin = child.stdin!;
      if (typeof input === "string") stdin.end(input);
      else input.then((text) => stdin.end(text), () => stdin.end());
    }
  });
}

/** Runs one hardened git command and returns the raw result (never throws for a non-zero exit). */
export async function gitRaw(target: GitTarget, args: string[], options: GitCallOptions = {}): Promise<GitResult> {
  const result = await runGit(target, args, options);
  return { ...result, stdout: result.stdout.toString("utf8") };
}

/**
 * Runs one hardened git command and returns stdout as bytes; throws `KeenError` code `git_failed`
 * for a non-zero exit. For output that holds file names, which git passes on as raw bytes that
 * need not be UTF-8.
 */
export async function gitBytes(target: GitTarget, args: string[], options: GitCallOptions = {}): Promise<Buffer> {
  const result = await runGit(target, args, options);
  if (result.exitCode !== 0) throw new KeenError("git_failed", `git ${args[0]} failed: ${result.stderr.trim()}`);
  return result.stdout;
}

/** The non-empty NUL-separated entries of raw git output, as views of its bytes (`-z` output, before any decoding). */
export function nulSeparatedBytes(output: Buffer): Buffer[] {
  const entries: Buffer[] = [];
  let start = 0;
  while (start < output.length) {
    let end = output.indexOf(0, start);
    if (end === -1) end = output.length;
    if (end > start) entries.push(output.subarray(start, end));
    start = end + 1;
  }
  return entries;
}

/**
 * Splits NUL-separated raw output into names, setting aside those that are not valid UTF-8: such
 * a name cannot round-trip through a string (it would come back with U+FFFD in place of its
 * bytes), so keen neither opens nor stages it.
 */
export function nulSeparatedNames(output: Buffer): { names: string[]; invalid: string[] } {
  const names: string[] = [];
  const invalid: string[] = [];
  const decoder = new TextDecoder("utf-8", { fatal: true });
  for (const raw of nulSeparatedBytes(output)) {
    try {
      names.push(decoder.decode(raw));
    } catch {
      invalid.push(raw.toString("utf8"));
    }
  }
  return { names, invalid };
}

/** Runs one hardened git command; throws `KeenError` code `git_failed` for a non-zero exit. Returns stdout as is. */
export async function git(target: GitTarget, args: string[], options: GitCallOptions = {}): Promise<string> {
  const result = await gitRaw(target, args, options);
  if (result.exitCode !== 0) throw gitFailure(args, result);
  return String(result.stdout);
}

/** The error for a failed git call: `git_locked` when a lock file stopped it, otherwise `git_failed` with git's output. */
export function gitFailure(args: string[], result: { stdout: unknown; stderr: unknown }): KeenError {
  const output = String(result.stderr || result.stdout).trim();
  const lock = /Unable to create '([^']+\.lock)': File exists/.exec(output);
  if (lock) {
    return new KeenError(
      "git_locked",
      `git ${args[0]} could not run: ${lock[1]} exists, so a git process is working in this repository. keen removes such a lock on open once no git process is alive; wait for the other process to finish and try again.`,
    );
  }
  return new KeenError("git_failed", `git ${args[0]} failed: ${output}`);
}

/** Git's output for a single path or value: exactly one trailing newline removed, so a path may itself contain newlines. */
export function oneLine(output: string): string {
  return output.endsWith("\n") ? output.slice(0, -1) : output;
}

/** Splits NUL-separated output (`-z`). */
export function nulSeparated(output: string): string[] {
  return output.split("\0").filter((entry) => entry !== "");
}
