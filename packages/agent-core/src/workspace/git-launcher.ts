import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, closeSync, constants as fsConstants, existsSync, fstatSync, mkdtempSync, openSync, readSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { rm, stat } from "node:fs/promises";
import { constants as osConstants, tmpdir } from "node:os";
import { join, resolve } from "node:path";

/**
 * Starts git processes for keen from one small resident `/bin/sh`, so keen's own process never
 * forks itself for a git call.
 *
 * `child_process.spawn` forks the calling process, and the fork costs the main thread in
 * proportion to the caller's memory mappings: about 6 ms in a bare Node process and 10-20 ms in a
 * `keen run`, against 1-2 ms for a fork of a shell. Each call is written to the shell's stdin as
 * one background job; the job runs git with the call's directory and environment, with stdin from
 * a file and stdout and stderr into files of a private temp folder, and answers `<id> <status>` on
 * the shell's stdout. Every word the job holds is single-quoted, so no data of a call is ever
 * read by the shell as code.
 *
 * The shell starts with keen's environment as it is at the first call; each job sets the
 * variables that differ from that and unsets the ones since removed. It keeps nothing alive: its
 * handles are unreferenced while no call is in flight, and its stdin ends when keen exits, which
 * ends the shell (removing its folder on the way out).
 */

/** What one call ended with, before decoding. */
export interface LaunchedGit {
  exitCode: number | undefined;
  stdout: Buffer;
  stderr: string;
}

/** One call as keen makes it: the arguments after `git`, where and with what environment, and stdin. */
export interface GitLaunch {
  /**
   * The program to run instead of git, found on PATH as git is: keen's own helpers that run
   * where a git call would (`chattr` for the worktrees' folder), so they cost no fork of keen's
   * process either.
   */
  program?: "chattr";
  args: string[];
  cwd: string;
  env: Record<string, string>;
  input?: string;
  /** Most bytes stdout and stderr may hold together; more ends the call as failed. */
  maxOutput: number;
  /** The git command, for messages. */
  command: string;
}

/** How often the output of a call still running is measured against its bound. */
const BOUND_CHECK_MS = 50;

/** Names a job may set or unset: plain shell variable names that the shell gives no meaning of its own. */
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const SHELL_OWNED = new Set([
  "IFS", "PS1", "PS2", "PS4", "PPID", "PWD", "OLDPWD", "OPTIND", "OPTARG", "LINENO", "ENV", "CDPATH",
  "SHELLOPTS", "BASHOPTS", "EUID", "UID", "GROUPS", "SHLVL", "HISTFILE", "MAIL", "MAILPATH", "FCEDIT",
]);

/** A word the shell reads as exactly these characters. */
function quote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

interface Pending {
  id: number;
  files: { input?: string; stdout: string; stderr: string };
  /** git's process id, once the job has reported it. */
  pid?: number;
  started: number;
  maxOutput: number;
  /** The git command (first argument after the settings), for messages. */
  command: string;
  /** Set when the call is ended from here (output over its bound). */
  failure?: string;
  settle: (result: LaunchedGit) => void;
}

class Launcher {
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private buffered = "";
  private timer: NodeJS.Timeout | undefined;
  dead = false;

  private constructor(
    private readonly shell: ChildProcess,
    /** The environment the shell started with; each job states only what differs. */
    private readonly baseEnv: Record<string, string>,
    private readonly dir: string,
  ) {
    shell.stdout!.setEncoding("utf8");
    shell.stdout!.on("data", (chunk: string) => this.receive(chunk));
    shell.stdin!.on("error", () => this.stop("the git launcher's shell stopped reading"));
    shell.on("exit", () => this.stop("the git launcher's shell exited before git finished"));
    shell.on("error", () => this.stop("the git launcher's shell failed"));
    shell.unref();
    this.idle();
  }

  /** A running launcher, or undefined when none can start here. */
  static start(env: Record<string, string>): Launcher | undefined {
    let dir: string;
    try {
      dir = privateDir();
    } catch {
      return undefined;
    }
    let shell: ChildProcess;
    try {
      shell = spawn("/bin/sh", ["-s"], { cwd: dir, env, stdio: ["pipe", "pipe", "ignore"] });
    } catch {
      rmSync(dir, { recursive: true, force: true });
      return undefined;
    }
    if (shell.pid === undefined) {
      shell.on("error", () => {});
      rmSync(dir, { recursive: true, force: true });
      return undefined;
    }
    const launcher = new Launcher(shell, env, dir);
    // Ctrl-C in a terminal reaches the whole process group: the shell stays for keen's own
    // shutdown (its background jobs ignore SIGINT anyway, as POSIX has it). Its folder goes with it.
    launcher.send(`trap '' INT QUIT; trap ${quote(`rm -rf -- ${quote(dir)}`)} EXIT\n`);
    return launcher;
  }

  /** Runs one call, or returns undefined when this call cannot go through the shell (the caller spawns git). */
  run(call: GitLaunch): Promise<LaunchedGit> | undefined {
    const script = this.jobScript(call);
    if (script === undefined) return undefined;
    const id = this.nextId++;
    const base = join(this.dir, String(id));
    const files = { input: call.input !== undefined ? `${base}.in` : undefined, stdout: `${base}.out`, stderr: `${base}.err` };
    return new Promise<LaunchedGit>((settle) => {
      const entry: Pending = { id, files, started: Date.now(), maxOutput: call.maxOutput, command: call.command, settle };
      this.pending.set(id, entry);
      this.busy();
      const launch = () => {
        if (!this.pending.has(id)) return;
        const stdin = files.input !== undefined ? quote(files.input) : "/dev/null";
        // The inner subshell execs git, so the reported pid is git's; the outer one waits and reports.
        // `jobs` first: a non-interactive dash reaps its finished background jobs only when asked,
        // so without it every call would leave a zombie process behind.
        this.send(`jobs >/dev/null; { ( ${script} ) <${stdin} >${quote(files.stdout)} 2>${quote(files.stderr)} & echo "${id} p $!"; wait "$!"; echo "${id} $?"; } &\n`);
      };
      if (files.input !== undefined) {
        // Written at once, as the outputs are read: a few small calls on a memory file system
        // cost the main thread less than the rounds through the thread pool of their async forms.
        try {
          writeFileSync(files.input, call.input!, { mode: 0o600 });
        } catch (error) {
          this.finish(entry, undefined, `git could not start: its input could not be written (${(error as Error).message})`);
          return;
        }
      }
      launch();
    });
  }

  /** The commands of one job before its redirections, or undefined when a word cannot be passed through the shell. */
  private jobScript(call: GitLaunch): string | undefined {
    const words = [call.cwd, ...call.args];
    const assignments: string[] = [];
    const removed: string[] = [];
    for (const [name, value] of Object.entries(call.env)) {
      if (Object.hasOwn(this.baseEnv, name) && this.baseEnv[name] === value) continue;
      if (!ENV_NAME.test(name) || SHELL_OWNED.has(name)) return undefined;
      words.push(value);
      assignments.push(`${name}=${quote(value)}`);
    }
    for (const name of Object.keys(this.baseEnv)) {
      if (Object.hasOwn(call.env, name)) continue;
      if (!ENV_NAME.test(name) || SHELL_OWNED.has(name)) return undefined;
      removed.push(name);
    }
    // A NUL cannot be passed to a process at all: spawn reports that case.
    if (words.some((word) => word.includes("\0"))) return undefined;
    const steps = [
      `cd -P -- ${quote(call.cwd)} 2>/dev/null || { printf '%s\\n' ${quote(`git could not start: cannot enter ${call.cwd}`)} >&2; exit 254; }`,
    ];
    if (removed.length > 0) steps.push(`unset -v ${removed.join(" ")}`);
    if (assignments.length > 0) steps.push(`export ${assignments.join(" ")}`);
    const program = call.program ?? "git";
    steps.push(`command -v ${program} >/dev/null 2>&1 || { printf '%s\\n' '${program} could not start: no ${program} on PATH' >&2; exit 253; }`);
    steps.push(`exec ${program} ${call.args.map(quote).join(" ")}`);
    return steps.join("; ");
  }

  private send(text: string): void {
    if (this.dead) return;
    this.shell.stdin!.write(text);
  }

  private receive(chunk: string): void {
    this.buffered += chunk;
    let end: number;
    while ((end = this.buffered.indexOf("\n")) !== -1) {
      const line = this.buffered.slice(0, end);
      this.buffered = this.buffered.slice(end + 1);
      const [id, kind, pid] = line.split(" ");
      const entry = this.pending.get(Number(id));
      if (!entry) continue;
      if (kind === "p") entry.pid = Number(pid);
      else this.collect(entry, Number(kind));
    }
  }

  /** Reads a finished job's files and settles its call. */
  private collect(entry: Pending, status: number): void {
    entry.pid = undefined;
    const stdout = readBounded(entry.files.stdout, entry.maxOutput);
    const stderr = readBounded(entry.files.stderr, entry.maxOutput);
    if (stdout === undefined || stderr === undefined) {
      this.finish(entry, undefined, `git could not start: the launcher's output files are missing (status ${status})`, stderr);
      return;
    }
    if (stdout === OVER || stderr === OVER || stdout.length + stderr.length > entry.maxOutput) entry.failure ??= overBound(entry);
    if (entry.failure !== undefined) {
      this.finish(entry, undefined, entry.failure, stderr === OVER ? undefined : stderr);
      return;
    }
    if (status === 253 || status === 254) {
      // The job's own message (no git, a bad directory) is all stderr holds.
      this.finish(entry, undefined, undefined, stderr);
      return;
    }
    if (status > 128) {
      // A shell reports a signal as 128 + its number; git's own statuses above 128 (129 for a
      // usage error, 255) look the same from here.
      const signal = Object.entries(osConstants.signals).find(([, number]) => number === status - 128)?.[0];
      this.finish(entry, undefined, `git ended with status ${status}${signal ? ` (stopped by ${signal}, or git's own status)` : ""}`, stderr);
      return;
    }
    this.finish(entry, status, undefined, stderr, stdout);
  }

  private finish(entry: Pending, exitCode: number | undefined, failure: string | undefined, stderr?: Buffer, stdout?: Buffer): void {
    if (!this.pending.delete(entry.id)) return;
    this.idle();
    const text = stderr ? stderr.toString("utf8") : "";
    entry.settle({ exitCode, stdout: stdout ?? Buffer.alloc(0), stderr: failure === undefined ? text : `${text}${text && !text.endsWith("\n") ? "\n" : ""}${failure}` });
    for (const file of Object.values(entry.files)) {
      if (file === undefined) continue;
      try {
        unlinkSync(file);
      } catch {
        // Never written (a job that did not start).
      }
    }
  }

  /** Ends the launcher: every call in flight settles with an error, and the next call starts a new shell. */
  private stop(reason: string): void {
    if (this.dead) return;
    this.dead = true;
    if (launcher === this) launcher = undefined;
    if (this.timer) clearInterval(this.timer);
    this.shell.stdout!.removeAllListeners("data");
    this.shell.stdout!.destroy();
    this.shell.stdin!.destroy();
    if (this.shell.exitCode === null && this.shell.signalCode === null) this.shell.kill();
    // git itself is left to finish (stopping it could leave a lock file behind).
    for (const entry of [...this.pending.values()]) {
      this.pending.delete(entry.id);
      entry.settle({ exitCode: undefined, stdout: Buffer.alloc(0), stderr: reason });
    }
    // Jobs still running write into files nobody reads; the folder goes with them.
    void rm(this.dir, { recursive: true, force: true }).catch(() => {});
  }

  /** A call is in flight: the shell's answers keep keen alive, and output is measured against its bound. */
  private busy(): void {
    (this.shell.stdout as unknown as { ref(): void }).ref();
    if (!this.timer) {
      this.timer = setInterval(() => this.checkBounds(), BOUND_CHECK_MS);
      this.timer.unref();
    }
  }

  /** No call in flight: nothing of the launcher keeps keen alive. */
  private idle(): void {
    if (this.pending.size > 0) return;
    (this.shell.stdout as unknown as { unref(): void }).unref();
    (this.shell.stdin as unknown as { unref(): void }).unref();
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Stops git where a running call's output has passed its bound (the files hold it, so it is measured there). */
  private checkBounds(): void {
    const now = Date.now();
    for (const entry of this.pending.values()) {
      if (entry.pid === undefined || entry.failure !== undefined || now - entry.started < BOUND_CHECK_MS) continue;
      void Promise.all([stat(entry.files.stdout), stat(entry.files.stderr)]).then(
        ([out, err]) => {
          if (out.size + err.size <= entry.maxOutput || entry.pid === undefined || entry.failure !== undefined) return;
          entry.failure = overBound(entry);
          stopGit(entry.pid);
        },
        () => {},
      );
    }
  }
}

/** A file's bytes; OVER when it holds more than `max` (it is then not read); undefined when it cannot be read. */
const OVER = Buffer.alloc(0);
function readBounded(path: string, max: number): Buffer | undefined {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return undefined;
  }
  try {
    const size = fstatSync(fd).size;
    if (size > max) return OVER;
    const bytes = Buffer.allocUnsafe(size);
    let read = 0;
    while (read < size) {
      const n = readSync(fd, bytes, read, size - read, read);
      if (n === 0) break;
      read += n;
    }
    return read === size ? bytes : bytes.subarray(0, read);
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

function overBound(entry: Pending): string {
  return `git ${entry.command} wrote more than ${entry.maxOutput} bytes`;
}

/** Ends git as `ChildProcess.kill` would (SIGTERM: git removes its lock files on the way out). */
function stopGit(pid: number): void {
  try {
    process.kill(pid, "SIGTERM");
  } catch {
    // Already gone.
  }
}

/** A new 0700 folder for a shell's files: in memory (`/dev/shm`) where there is one to write to. */
function privateDir(): string {
  if (existsSync("/dev/shm")) {
    try {
      accessSync("/dev/shm", fsConstants.W_OK);
      return mkdtempSync(join("/dev/shm", "keen-git-"));
    } catch {
      // Fall through to the system temp folder.
    }
  }
  return mkdtempSync(join(tmpdir(), "keen-git-"));
}

let launcher: Launcher | undefined;
/** Set once starting a shell has failed: keen spawns git directly from then on. */
let unavailable = process.platform === "win32" || !existsSync("/bin/sh");

/**
 * Runs one git call through the launcher, or returns undefined when it cannot take this call:
 * no `/bin/sh` (Windows), `KEEN_GIT_LAUNCHER=0`, or a call with a word the shell cannot carry.
 * The caller then spawns git itself. A shell that has died is replaced on the next call, started
 * with `baseEnv()` as its environment.
 */
export function launchGit(call: GitLaunch, baseEnv: () => Record<string, string>): Promise<LaunchedGit> | undefined {
  if (unavailable || process.env.KEEN_GIT_LAUNCHER === "0") return undefined;
  if (!launcher || launcher.dead) {
    launcher = Launcher.start(baseEnv());
    if (!launcher) {
      unavailable = true;
      return undefined;
    }
  }
  return launcher.run({ ...call, cwd: resolve(call.cwd) });
}

/** Whether calls go through the launcher now (it may still turn a call down, see `launchGit`). */
export function launcherWanted(): boolean {
  return !unavailable && process.env.KEEN_GIT_LAUNCHER !== "0";
}
