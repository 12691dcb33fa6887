import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { z } from "zod";
import { ConfigError, KeenError } from "../errors.js";
import { runInProcessGroup, type CommandRunner, type CommandRunOptions } from "./command-runner.js";
import { isInside } from "./is-inside.js";
import type { ExecResult } from "./workspace.js";

/**
 * How `sandboxRunner` confines commands. Every field is optional; the defaults give no network,
 * a read-only system, only the workspace root writable, 600 s of CPU time and 8 GiB of memory
 * per process.
 */
export interface SandboxOptions {
  /** Allow network access. Default `false`: the command gets its own network namespace with only a loopback device. */
  network?: boolean;
  /** CPU seconds per process (`RLIMIT_CPU`); SIGXCPU at the limit, SIGKILL one second later. Default 600; `Infinity` for none. */
  cpuSeconds?: number;
  /**
   * Memory per process in bytes: the data limit (`RLIMIT_DATA`), which counts the private writable
   * memory a process maps (heap, anonymous mappings), not address space it only reserves. Default
   * 8 GiB; `Infinity` for none.
   */
  memoryBytes?: number;
  /**
   * Address space per process in bytes (`RLIMIT_AS`). Default `Infinity`: V8 reserves about 10 GiB
   * of address space for every WebAssembly memory (Node's own `fetch` uses one), so a tight
   * address-space limit breaks ordinary JavaScript tooling. Set it for commands known not to.
   */
  addressSpaceBytes?: number;
  /** Mount the workspace root read-only for every command this runner runs. Default `false`. */
  readOnly?: boolean;
  /** Absolute paths to make visible read-only (for example a toolchain under a hidden folder). */
  extraReadOnlyPaths?: string[];
  /** Absolute paths to leave writable besides the workspace root (for example a shared build cache). */
  extraWritablePaths?: string[];
  /**
   * Absolute paths to replace with an empty folder, such as the real home with its credentials
   * (`[os.homedir()]`). The workspace and the paths above stay visible when they lie inside one.
   */
  hidePaths?: string[];
  /** Environment variables passed through from keen's own environment. Default: PATH, locale, TERM, TZ, USER, LOGNAME, SHELL. */
  passEnv?: string[];
  /** The bubblewrap binary. Default `bwrap` on PATH. */
  bwrapPath?: string;
}

const AbsolutePath = z.string().refine((path) => isAbsolute(path), "must be an absolute path");
const Limit = z.union([z.number().int().positive(), z.literal(Infinity)]);
const SandboxOptionsSchema = z.object({
  network: z.boolean().optional(),
  cpuSeconds: Limit.optional(),
  memoryBytes: Limit.optional(),
  addressSpaceBytes: Limit.optional(),
  readOnly: z.boolean().optional(),
  extraReadOnlyPaths: z.array(AbsolutePath).optional(),
  extraWritablePaths: z.array(AbsolutePath).optional(),
  hidePaths: z.array(AbsolutePath).optional(),
  passEnv: z.array(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/)).optional(),
  bwrapPath: z.string().min(1).optional(),
});

const DEFAULT_CPU_SECONDS = 600;
const DEFAULT_MEMORY_BYTES = 8 * 1024 ** 3;
const DEFAULT_PASS_ENV = ["PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "USER", "LOGNAME", "SHELL"];
/** Where HOME points inside the sandbox: a folder on the private /tmp, gone when the command ends. */
export const SANDBOX_HOME = "/tmp/home";
const SIGXCPU_EXIT = 128 + 24;
const PROBE_TIMEOUT_MS = 10_000;

/** bubblewrap is missing or cannot create namespaces on this machine. */
export class SandboxUnavailableError extends KeenError {
  constructor(reason: string) {
    super(
      "sandbox_unavailable",
      `Commands cannot be sandboxed here: ${reason}. Install bubblewrap (for example \`apt-get install bubblewrap\` or \`dnf install bubblewrap\`) ` +
        "and make sure it may create namespaces, or pass `sandbox: false` to run commands without a sandbox.",
    );
    this.name = "SandboxUnavailableError";
  }
}

const probes = new Map<string, Promise<string | null>>();

/**
 * Checks once per bwrap path that bubblewrap exists and can actually start a sandbox here (it
 * fails in containers that forbid namespaces). The answer is cached for the process.
 *
 * @example
 * const workspace = await LocalWorkspace.open(dir, { sandbox: await isSandboxAvailable() });
 */
export async function isSandboxAvailable(options: { bwrapPath?: string } = {}): Promise<boolean> {
  return (await sandboxProblem(options.bwrapPath ?? "bwrap")) === null;
}

/** Throws `SandboxUnavailableError` (with the reason) when bubblewrap cannot be used. */
export async function assertSandboxAvailable(options: { bwrapPath?: string } = {}): Promise<void> {
  const problem = await sandboxProblem(options.bwrapPath ?? "bwrap");
  if (problem !== null) throw new SandboxUnavailableError(problem);
}

function sandboxProblem(bwrapPath: string): Promise<string | null> {
  let probe = probes.get(bwrapPath);
  if (!probe) {
    probe = probeBwrap(bwrapPath);
    probes.set(bwrapPath, probe);
  }
  return probe;
}

function probeBwrap(bwrapPath: string): Promise<string | null> {
  const args = [...baseArgs(false), "--", "/bin/sh", "-c", "exit 0"];
  return new Promise((resolvePromise) => {
    const child = spawn(bwrapPath, args, { stdio: ["ignore", "ignore", "pipe"], timeout: PROBE_TIMEOUT_MS });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
    child.on("error", (error: NodeJS.ErrnoException) => {
      resolvePromise(error.code === "ENOENT" ? `${bwrapPath} was not found` : `${bwrapPath} could not be started (${error.message})`);
    });
    child.on("close", (code, signal) => {
      if (code === 0) resolvePromise(null);
      else resolvePromise(`${bwrapPath} failed a trial run (${stderr.trim() || (signal ? `killed by ${signal}` : `exit code ${code}`)})`);
    });
  });
}

/** Namespace and hardening flags shared by the trial run and real commands. */
function baseArgs(network: boolean): string[] {
  return [
    "--ro-bind", "/", "/",
    "--dev", "/dev",
    "--proc", "/proc",
    "--tmpfs", "/tmp",
    ...(existsSync("/run") ? ["--tmpfs", "/run"] : []),
    ...(network ? [] : ["--unshare-net"]),
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--hostname", "keen-sandbox",
    "--die-with-parent",
    "--new-session",
    "--cap-drop", "ALL",
  ];
}

/**
 * A `CommandRunner` that runs every command under bubblewrap: the whole system read-only, a fresh
 * /dev and /proc, a private /tmp and /run, no network, its own PID/IPC/UTS namespaces, no
 * capabilities, CPU-time and address-space limits, HOME on the private /tmp, and only the
 * workspace root writable. The common git dir (objects, refs, the worktree's index) is
 * read-only, so git commands that only read (`status`, `diff`, `log`, `show`, `grep`) work and
 * ones that write (`add`, `commit`, `checkout`, `stash`) fail; keen commits outside the sandbox.
 *
 * A timeout or abort kills the whole tree: bubblewrap is signalled as a process group, and its
 * PID namespace takes every process inside down with it.
 *
 * @example
 * const workspace = await LocalWorkspace.open(dir, { commandRunner: sandboxRunner({ cpuSeconds: 60 }) });
 * const result = await workspace.exec("curl -sI https://example.com"); // fails: no network
 */
export function sandboxRunner(options: SandboxOptions = {}): CommandRunner {
  const parsed = SandboxOptionsSchema.safeParse(options);
  if (!parsed.success) throw new ConfigError(`Invalid sandbox options: ${z.prettifyError(parsed.error)}`);
  const settings = parsed.data;
  const bwrapPath = settings.bwrapPath ?? "bwrap";
  const cpuSeconds = settings.cpuSeconds ?? DEFAULT_CPU_SECONDS;
  const limits = {
    cpuSeconds,
    memoryBytes: settings.memoryBytes ?? DEFAULT_MEMORY_BYTES,
    addressSpaceBytes: settings.addressSpaceBytes ?? Infinity,
  };

  return {
    enforcesReadOnly: true,
    async run(command: string, runOptions: CommandRunOptions): Promise<ExecResult> {
      await assertSandboxAvailable({ bwrapPath });
      const root = resolve(runOptions.root ?? runOptions.cwd);
      const readOnly = settings.readOnly === true || runOptions.readOnly === true;
      const args = [...baseArgs(settings.network === true), "--dir", SANDBOX_HOME];
      // Git metadata outside the root (a worktree's common dir) stays readable but not writable,
      // also when it lives under /tmp, which the private /tmp would otherwise hide.
      const readable = [...(runOptions.readOnlyPaths ?? []), ...(settings.extraReadOnlyPaths ?? [])].filter((path) => existsSync(path));
      const writable = (settings.extraWritablePaths ?? []).filter((path) => existsSync(path));
      const mounted = [root, ...readable, ...writable];
      // A hidden folder that holds mounted ones is hidden first and the mounts made inside it;
      // any other is hidden last, so a mount of its parent cannot bring it back.
      const hidden = (settings.hidePaths ?? []).filter((path) => existsSync(path));
      const hideFirst = hidden.filter((path) => mounted.some((inner) => inner === path || isInside(path, inner)));
      for (const path of hideFirst) args.push("--tmpfs", path);
      for (const path of readable) args.push("--ro-bind", path, path);
      args.push(readOnly ? "--ro-bind" : "--bind", root, root);
      // A main checkout holds its git dir inside the root; mount it read-only again on top.
      for (const path of readable) if (isInside(root, path)) args.push("--ro-bind", path, path);
      for (const path of writable) args.push("--bind", path, path);
      for (const path of hidden) if (!hideFirst.includes(path)) args.push("--tmpfs", path);
      args.push("--chdir", runOptions.cwd, "--clearenv");
      const env: Record<string, string> = { HOME: SANDBOX_HOME, TMPDIR: "/tmp" };
      for (const name of settings.passEnv ?? DEFAULT_PASS_ENV) {
        const value = process.env[name];
        if (value !== undefined) env[name] = value;
      }
      Object.assign(env, runOptions.env);
      for (const [name, value] of Object.entries(env)) args.push("--setenv", name, value);
      args.push("--", "/bin/sh", "-c", limitScript(limits), "keen-sandbox", command);

      const { env: _env, ...rest } = runOptions;
      const result = await runInProcessGroup(bwrapPath, args, rest);
      if (result.exitCode === SIGXCPU_EXIT && Number.isFinite(cpuSeconds)) {
        return { ...result, output: `${result.output}\n[stopped by the sandbox: CPU time limit of ${cpuSeconds} s reached]\n` };
      }
      return result;
    },
  };
}

/**
 * The shell prologue that applies the limits before running the command. The hard CPU limit is
 * one second above the soft one, so a process first gets SIGXCPU (an exit status we can name).
 */
function limitScript(limits: { cpuSeconds: number; memoryBytes: number; addressSpaceBytes: number }): string {
  const kib = (bytes: number) => Math.max(1, Math.floor(bytes / 1024));
  const steps: string[] = [];
  if (Number.isFinite(limits.cpuSeconds)) steps.push(`ulimit -t ${limits.cpuSeconds + 1}`, `ulimit -S -t ${limits.cpuSeconds}`);
  if (Number.isFinite(limits.memoryBytes)) steps.push(`ulimit -d ${kib(limits.memoryBytes)}`);
  if (Number.isFinite(limits.addressSpaceBytes)) steps.push(`ulimit -v ${kib(limits.addressSpaceBytes)}`);
  steps.push('exec /bin/sh -c "$1"');
  return steps.join(" && ");
}
