import { spawn } from "node:child_process";
import { stat, statfs } from "node:fs/promises";
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmdirSync, writeFileSync } from "node:fs";
import { isAbsolute, join, resolve } from "node:path";
import * as z from "zod";
import { ConfigError, KeenError } from "../errors.js";
import { runInProcessGroup, type CommandRunner, type CommandRunOptions } from "./command-runner.js";
import { isInside } from "./is-inside.js";
import { sandboxSystemGitConfig } from "./sandbox-git-config.js";
import { sandboxSeccompProgram } from "./seccomp.js";
import type { ExecResult } from "./workspace.js";

/**
 * How `sandboxRunner` confines commands. Every field is optional; the defaults give no network,
 * only the system's read-only tool folders (`/usr`, `/opt`, a few files of `/etc`) and the
 * workspace (writable), an empty HOME, a private 512 MiB /tmp, 600 s of CPU time and 8 GiB of
 * memory per process, and at most 256 processes.
 */
export interface SandboxOptions {
  /**
   * What of the host's file system the command sees. `"minimal"` (the default): `/usr` (and the
   * `/bin`, `/lib` … links into it), `/opt`, `/sys`, and from `/etc` only what tools need
   * (`passwd`, `group`, `hosts`, `resolv.conf`, TLS certificates, `alternatives`, …, never
   * `shadow` or credential files), plus the workspace and the paths named below. Home folders,
   * `/root`, `/var`, `/srv`, `/mnt` and the rest of `/etc` are not there. `"full"`: the whole
   * host file system read-only, minus `hidePaths` (what older versions did).
   */
  hostView?: "minimal" | "full";
  /**
   * Size of the private /tmp (which also holds HOME) in bytes, and of the private /dev/shm; /run
   * gets at most 64 MiB. Default 512 MiB. All three are memory-backed (tmpfs).
   */
  tmpBytes?: number;
  /**
   * Most processes the command may have running at once. Enforced with a cgroup `pids`
   * controller where keen may create one (as root on most hosts), otherwise with
   * `RLIMIT_NPROC`, which counts per user namespace and does not apply to root. Default 256;
   * `Infinity` for none.
   */
  maxProcesses?: number;
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
  /**
   * Most memory the whole command may use at once, in bytes: every process together, plus what it
   * puts on the private /tmp, /dev/shm and /run (tmpfs pages count as memory). `memoryBytes` bounds
   * each process alone, so 256 processes could otherwise take 256 times that from the host. Enforced
   * with a cgroup `memory` controller where keen may create one (as root on most hosts); the
   * kernel's OOM killer then ends processes of this command only. Default 8 GiB; `Infinity` for none.
   */
  totalMemoryBytes?: number;
  /**
   * Largest file a process may write, in bytes (`RLIMIT_FSIZE`); a write past it fails and the
   * process gets SIGXFSZ. Bounds what one runaway or hostile command (`fallocate -l 1T`, a log in a
   * loop) can put on the worktree's disk in one file. Default 1 GiB; `Infinity` for none.
   */
  maxFileBytes?: number;
  /**
   * Most disk one command may take on the file systems it can write (the worktree's, and those of
   * `extraWritablePaths`), in bytes: measured as the drop in their free space, checked four times
   * a second, and the command is stopped (reported as `[stopped by the sandbox: it took more than
   * … bytes on the worktree's disk …]`) once it is past. `maxFileBytes` bounds one file; this bounds the many.
   * Other writers on the same file system while the command runs count too. Default 10 GiB;
   * `Infinity` for none.
   */
  maxDiskBytes?: number;
  /** Most files and folders one command may create there, measured and enforced like `maxDiskBytes` (free inodes). Default 1,000,000; `Infinity` for none. */
  maxDiskFiles?: number;
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
  /**
   * The host's system-wide git config. Commands see at `/etc/gitconfig` only a sanitized copy
   * of it (no credential helpers, HTTP headers, cookie files, includes or passwords in URLs),
   * in both host views. Default `/etc/gitconfig`.
   */
  systemGitConfig?: string;
}

const AbsolutePath = z.string().refine((path) => isAbsolute(path), "must be an absolute path");
const Limit = z.union([z.number().int().positive(), z.literal(Infinity)]);
const SandboxOptionsSchema = z.object({
  hostView: z.enum(["minimal", "full"]).optional(),
  tmpBytes: z.number().int().min(1024 * 1024).optional(),
  maxProcesses: Limit.optional(),
  network: z.boolean().optional(),
  cpuSeconds: Limit.optional(),
  memoryBytes: Limit.optional(),
  addressSpaceBytes: Limit.optional(),
  maxFileBytes: Limit.optional(),
  totalMemoryBytes: Limit.optional(),
  maxDiskBytes: Limit.optional(),
  maxDiskFiles: Limit.optional(),
  readOnly: z.boolean().optional(),
  extraReadOnlyPaths: z.array(AbsolutePath).optional(),
  extraWritablePaths: z.array(AbsolutePath).optional(),
  hidePaths: z.array(AbsolutePath).optional(),
  passEnv: z.array(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/)).optional(),
  bwrapPath: z.string().min(1).optional(),
  systemGitConfig: AbsolutePath.optional(),
});

/** Where git reads its system-wide config (the sandbox mounts the sanitized copy there). */
const SYSTEM_GIT_CONFIG = "/etc/gitconfig";

const DEFAULT_CPU_SECONDS = 600;
const DEFAULT_MEMORY_BYTES = 8 * 1024 ** 3;
const DEFAULT_MAX_FILE_BYTES = 1024 ** 3;
const DEFAULT_TOTAL_MEMORY_BYTES = 8 * 1024 ** 3;
const DEFAULT_MAX_DISK_BYTES = 10 * 1024 ** 3;
const DEFAULT_MAX_DISK_FILES = 1_000_000;
/** How often a running command's disk use is checked. */
const DISK_CHECK_MS = 250;
const DEFAULT_TMP_BYTES = 512 * 1024 * 1024;
/** Most of /run's tmpfs: it holds sockets and pid files, never bulk data. */
const RUN_BYTES = 64 * 1024 * 1024;
const DEFAULT_MAX_PROCESSES = 256;
const DEFAULT_PASS_ENV = ["PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "USER", "LOGNAME", "SHELL"];
/** Where HOME points inside the sandbox: a folder on the private /tmp, gone when the command ends. */
export const SANDBOX_HOME = "/tmp/home";
const SIGXCPU_EXIT = 128 + 24;
const SIGXFSZ_EXIT = 128 + 25;
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
  const args = [...baseArgs({ network: false, hostView: "minimal", tmpBytes: DEFAULT_TMP_BYTES }), "--", "/bin/sh", "-c", "exit 0"];
  return new Promise((resolvePromise) => {
    const child = spawn(bwrapPath, args, { stdio: ["ignore", "ignore", "pipe"], timeout: PROBE_TIMEOUT_MS, env: bwrapEnv() });
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

/**
 * bubblewrap's own environment. bwrap becomes PID 1 inside the sandbox, and its environment is
 * readable there (`/proc/1/environ`), so it gets nothing of keen's (no API keys): only PATH to
 * find itself. The command's environment comes from `--setenv` after `--clearenv`.
 */
function bwrapEnv(): Record<string, string> {
  return { PATH: process.env.PATH ?? "/usr/bin:/bin" };
}

/** Top-level folders that are links into /usr on merged-/usr systems, or folders of their own on older ones. */
const SYSTEM_FOLDERS = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/** Read-only tool folders besides /usr. */
const TOOL_FOLDERS = ["/opt", "/sys", "/nix/store", "/snap"];
/**
 * The entries of /etc that ordinary tools read: name service, TLS trust, dynamic linker, time
 * zone, shells and terminal data, Debian's `alternatives` links. Not `shadow`, `gshadow`, `ssh`,
 * `npmrc`, `pip.conf`, `sudoers` or anything else that holds secrets or site credentials.
 * `gitconfig` is shown only as a sanitized copy (see `systemGitConfig`).
 */
const ETC_ENTRIES = [
  "passwd", "group", "hosts", "hostname", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf", "services", "protocols",
  "networks", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "ssl", "ca-certificates",
  "ca-certificates.conf", "pki", "crypto-policies", "alternatives", "os-release", "debian_version", "lsb-release",
  "mime.types", "magic", "magic.mime", "inputrc", "bash.bashrc", "profile", "profile.d", "shells", "terminfo",
  "locale.alias", "locale.conf", "default/locale", "fonts", "java-17-openjdk", "python3",
];

interface ViewSettings {
  network: boolean;
  hostView: "minimal" | "full";
  tmpBytes: number;
}

/** Namespace, hardening and file-system flags shared by the trial run and real commands. */
function baseArgs(view: ViewSettings): string[] {
  return [
    ...hostMounts(view.hostView),
    // bwrap's /dev and any tmpfs without --size may grow to half the host's memory: /dev is made
    // read-only (device nodes still work) and every writable tmpfs gets a size.
    "--dev", "/dev",
    "--remount-ro", "/dev",
    "--size", String(view.tmpBytes), "--tmpfs", "/dev/shm",
    "--proc", "/proc",
    // bwrap covers /proc/sys only when the folder itself is writable, which it never is (0555);
    // its files are, for uid 0, and most sysctls check nothing more: as root, `kernel/core_pattern`
    // alone would run a program of the agent's on the host. Read-only, for everyone.
    "--ro-bind", "/proc/sys", "/proc/sys",
    // The same holds beyond /proc/sys: `sysrq-trigger` (reboot, crash), `irq/*/smp_affinity`,
    // `mtrr`, `pressure` triggers and the driver folders are writable for uid 0 without any
    // capability. Every such kernel-wide entry is read-only too, as container runtimes make them.
    ...kernelProcEntries().flatMap((path) => ["--ro-bind", path, path]),
    "--size", String(view.tmpBytes), "--tmpfs", "/tmp",
    ...(existsSync("/run") ? ["--size", String(Math.min(view.tmpBytes, RUN_BYTES)), "--tmpfs", "/run"] : []),
    ...(view.network ? [] : ["--unshare-net"]),
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--hostname", "keen-sandbox",
    "--die-with-parent",
    "--new-session",
    "--cap-drop", "ALL",
  ];
}

/** Kernel-wide folders of /proc with files root may write (`sys` is mounted on its own). */
const PROC_KERNEL_FOLDERS = ["irq", "bus", "fs", "acpi", "pressure", "driver", "scsi", "tty", "asound"];
let procEntries: string[] | undefined;

/**
 * The entries of /proc to mount read-only: the folders above and every top-level file whose
 * owner may write it (`sysrq-trigger`, `mtrr`, …), whatever this kernel has. Per-process entries
 * (`1/`, `self`) and per-namespace ones (`net`) are left to the sandbox's own /proc.
 */
function kernelProcEntries(): string[] {
  if (procEntries) return procEntries;
  const found: string[] = [];
  let names: string[] = [];
  try {
    names = readdirSync("/proc");
  } catch {
    names = [];
  }
  for (const name of names) {
    if (/^\d+$/.test(name) || name === "self" || name === "thread-self" || name === "net" || name === "sys") continue;
    const path = `/proc/${name}`;
    const info = lstatOrNull(path);
    if (!info) continue;
    if (info.isDirectory() ? PROC_KERNEL_FOLDERS.includes(name) : info.isFile() && (Number(info.mode) & 0o200) !== 0) found.push(path);
  }
  procEntries = found;
  return found;
}

/** What of the host file system is visible before the workspace is mounted. */
function hostMounts(view: "minimal" | "full"): string[] {
  if (view === "full") return ["--ro-bind", "/", "/"];
  const args = ["--ro-bind", "/usr", "/usr"];
  for (const path of SYSTEM_FOLDERS) {
    const info = lstatOrNull(path);
    if (info?.isSymbolicLink()) args.push("--symlink", readlinkSync(path), path);
    else if (info?.isDirectory()) args.push("--ro-bind", path, path);
  }
  for (const path of TOOL_FOLDERS) if (existsSync(path)) args.push("--ro-bind", path, path);
  args.push("--dir", "/etc");
  for (const entry of ETC_ENTRIES) {
    const path = `/etc/${entry}`;
    if (existsSync(path)) args.push("--ro-bind", path, path);
  }
  args.push("--dir", "/var", "--symlink", "../tmp", "/var/tmp");
  return args;
}

function lstatOrNull(path: string): ReturnType<typeof lstatSync> | null {
  try {
    return lstatSync(path);
  } catch {
    return null;
  }
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
  const maxProcesses = settings.maxProcesses ?? DEFAULT_MAX_PROCESSES;
  const totalMemoryBytes = settings.totalMemoryBytes ?? DEFAULT_TOTAL_MEMORY_BYTES;
  const maxDiskBytes = settings.maxDiskBytes ?? DEFAULT_MAX_DISK_BYTES;
  const maxDiskFiles = settings.maxDiskFiles ?? DEFAULT_MAX_DISK_FILES;
  const limits = {
    cpuSeconds,
    memoryBytes: settings.memoryBytes ?? DEFAULT_MEMORY_BYTES,
    addressSpaceBytes: settings.addressSpaceBytes ?? Infinity,
    maxFileBytes: settings.maxFileBytes ?? DEFAULT_MAX_FILE_BYTES,
    maxProcesses,
  };
  const view: ViewSettings = {
    network: settings.network === true,
    hostView: settings.hostView ?? "minimal",
    tmpBytes: settings.tmpBytes ?? DEFAULT_TMP_BYTES,
  };

  return {
    enforcesReadOnly: true,
    async run(command: string, runOptions: CommandRunOptions): Promise<ExecResult> {
      await assertSandboxAvailable({ bwrapPath });
      const root = resolve(runOptions.root ?? runOptions.cwd);
      const readOnly = settings.readOnly === true || runOptions.readOnly === true;
      const args = [...baseArgs(view), "--dir", SANDBOX_HOME];
      // The system-wide git config may hold a site's tokens: only its sanitized copy is shown. In
      // the full view the real file is there (under the read-only `/`) and the copy covers it.
      const systemConfig = await sandboxSystemGitConfig(settings.systemGitConfig ?? SYSTEM_GIT_CONFIG);
      const realConfig = existsSync(SYSTEM_GIT_CONFIG);
      if (systemConfig && (view.hostView === "minimal" || realConfig)) args.push("--ro-bind", systemConfig, SYSTEM_GIT_CONFIG);
      else if (view.hostView === "full" && realConfig) args.push("--ro-bind", "/dev/null", SYSTEM_GIT_CONFIG);
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
      // The checkout's `.git` (a worktree's pointer file, or a main checkout's folder) is read-only
      // inside, so no command can point it at a repository of its own.
      const dotGit = join(root, ".git");
      if (lstatOrNull(dotGit)) args.push("--ro-bind", dotGit, dotGit);
      // A main checkout holds its git dir inside the root; mount it read-only again on top.
      for (const path of readable) if (isInside(root, path)) args.push("--ro-bind", path, path);
      for (const path of writable) args.push("--bind", path, path);
      for (const { path, source } of runOptions.replaceFiles ?? []) {
        if (lstatOrNull(path)?.isFile() && lstatOrNull(source)?.isFile()) args.push("--ro-bind", source, path);
      }
      for (const path of hidden) if (!hideFirst.includes(path)) args.push("--tmpfs", path);
      // The sandbox's own root (holding /etc, /var and the mount points) is read-only too.
      if (view.hostView === "minimal") args.push("--remount-ro", "/");
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
      const cgroup = Number.isFinite(maxProcesses) ? createPidsCgroup(maxProcesses) : null;
      const memoryCgroup = Number.isFinite(totalMemoryBytes) ? createMemoryCgroup(totalMemoryBytes, cgroup) : null;
      const cgroupProcs = [cgroup, memoryCgroup === cgroup ? null : memoryCgroup].map((dir) => (dir ? join(dir, "cgroup.procs") : "-"));
      const seccomp = sandboxSeccompProgram();
      // bwrap reads the program from fd 3 and installs it last, just before the command runs.
      if (seccomp) args.unshift("--seccomp", "3");
      // bwrap passes every open file descriptor through, and Node's spawn leaves open those keen
      // inherited without close-on-exec (a launcher's log file, a folder: `/proc/self/fd/N/..`
      // would be the host's file system). A shell closes them all before bwrap starts, and
      // moves itself into the cgroup first.
      const starter = starterShell();
      const enter = 'for procs in "$1" "$2"; do [ "$procs" = - ] || echo $$ > "$procs" || exit 125; done';
      const script = [enter, "shift 2", closeFdsScript(starter, seccomp ? [3] : []), 'exec "$@"'].join(" && ");
      const disk = await watchDisk([root, ...writable], { bytes: maxDiskBytes, files: maxDiskFiles }, runOptions.signal);
      let result: ExecResult;
      try {
        result = await runInProcessGroup(
          starter.path,
          ["-c", script, "keen-sandbox", ...cgroupProcs, bwrapPath, ...args],
          { ...rest, replaceEnv: bwrapEnv(), ...(disk ? { signal: disk.signal } : {}) },
          seccomp ?? undefined,
        );
      } finally {
        disk?.stop();
      }
      if (disk?.exceeded) {
        result = { ...result, aborted: runOptions.signal?.aborted === true, output: `${result.output}\n[stopped by the sandbox: it took more than ${disk.exceeded} on the worktree's disk (maxDiskBytes, maxDiskFiles)]\n` };
      }
      if (cgroup) await removeCgroup(cgroup);
      if (memoryCgroup && memoryCgroup !== cgroup) await removeCgroup(memoryCgroup);
      if (result.exitCode === SIGXCPU_EXIT && Number.isFinite(cpuSeconds)) {
        return { ...result, output: `${result.output}\n[stopped by the sandbox: CPU time limit of ${cpuSeconds} s reached]\n` };
      }
      if (result.exitCode === SIGXFSZ_EXIT && Number.isFinite(limits.maxFileBytes)) {
        return { ...result, output: `${result.output}\n[stopped by the sandbox: file size limit of ${limits.maxFileBytes} bytes reached]\n` };
      }
      return result;
    },
  };
}

/**
 * The shell prologue that applies the limits before running the command. The hard CPU limit is
 * one second above the soft one, so a process first gets SIGXCPU (an exit status we can name).
 */
function limitScript(limits: { cpuSeconds: number; memoryBytes: number; addressSpaceBytes: number; maxFileBytes: number; maxProcesses: number }): string {
  const kib = (bytes: number) => Math.max(1, Math.floor(bytes / 1024));
  const steps: string[] = [];
  // RLIMIT_NPROC (dash spells it -p): counted per user namespace, so it bounds this sandbox
  // alone when bwrap runs unprivileged; the kernel never applies it to root.
  if (Number.isFinite(limits.maxProcesses)) steps.push(`ulimit -p ${limits.maxProcesses}`);
  if (Number.isFinite(limits.cpuSeconds)) steps.push(`ulimit -t ${limits.cpuSeconds + 1}`, `ulimit -S -t ${limits.cpuSeconds}`);
  if (Number.isFinite(limits.memoryBytes)) steps.push(`ulimit -d ${kib(limits.memoryBytes)}`);
  if (Number.isFinite(limits.addressSpaceBytes)) steps.push(`ulimit -v ${kib(limits.addressSpaceBytes)}`);
  // /bin/sh (dash, or bash in its POSIX mode) counts -f in 512-byte blocks.
  if (Number.isFinite(limits.maxFileBytes)) steps.push(`ulimit -f ${Math.max(1, Math.floor(limits.maxFileBytes / 512))}`);
  steps.push('exec /bin/sh -c "$1"');
  return steps.join(" && ");
}

interface StarterShell {
  path: string;
  /** bash can close any descriptor; dash (`/bin/sh` on Debian) only single-digit ones. */
  anyDescriptor: boolean;
}

let starter: StarterShell | undefined;

/** The shell that starts bwrap: bash where the host has it, else /bin/sh. */
function starterShell(): StarterShell {
  starter ??= ["/bin/bash", "/usr/bin/bash"].filter((path) => existsSync(path)).map((path) => ({ path, anyDescriptor: true }))[0] ?? { path: "/bin/sh", anyDescriptor: false };
  return starter;
}

/** Shell code that closes every descriptor above stderr except `keep`. */
function closeFdsScript(shell: StarterShell, keep: number[]): string {
  const kept = [0, 1, 2, ...keep].join("|");
  if (shell.anyDescriptor) {
    return `{ for fd in /proc/self/fd/*; do fd=\${fd##*/}; case $fd in ${kept}) ;; *) eval "exec $fd>&-" 2>/dev/null;; esac; done; true; }`;
  }
  const closable = [3, 4, 5, 6, 7, 8, 9].filter((fd) => !keep.includes(fd));
  return `exec ${closable.map((fd) => `${fd}>&-`).join(" ")}`;
}

let cgroupCounter = 0;

/**
 * A fresh cgroup under the first of `bases` where keen may make one and `configure` succeeds, or
 * null. A cgroup whose settings could not be written is removed again.
 */
function createCgroup(bases: string[], configure: (dir: string) => void): string | null {
  for (const base of bases) {
    const dir = join(base, `keen-${process.pid}-${++cgroupCounter}`);
    try {
      mkdirSync(dir);
    } catch {
      continue;
    }
    try {
      configure(dir);
      return dir;
    } catch {
      try {
        rmdirSync(dir);
      } catch {
        // Left for the system to clean up.
      }
    }
  }
  return null;
}

/** Writes an optional setting: kernels without swap accounting lack the file, and the cap alone still holds. */
function writeIfSupported(file: string, value: string): void {
  try {
    writeFileSync(file, value);
  } catch {
    // Not on this kernel.
  }
}

/**
 * A fresh cgroup with the `pids` controller capped at `max`, or null where keen may not make one
 * (no cgroup file system, no permission, cgroup v2 without a delegated `pids` controller). The
 * sandbox is started inside it, so every process in the sandbox counts against the cap, root
 * or not.
 */
function createPidsCgroup(max: number): string | null {
  return createCgroup(cgroupBases("pids"), (dir) => writeFileSync(join(dir, "pids.max"), String(max)));
}

/**
 * A fresh cgroup whose `memory` controller caps the command's memory at `max` bytes, or null where
 * keen may not make one. On cgroup v2 the pids cgroup (one hierarchy for every controller) gets the
 * cap itself when it has the controller; on v1 the memory hierarchy gets a cgroup of its own.
 */
function createMemoryCgroup(max: number, pidsCgroup: string | null): string | null {
  if (pidsCgroup && existsSync(join(pidsCgroup, "memory.max"))) {
    try {
      writeFileSync(join(pidsCgroup, "memory.max"), String(max));
      writeIfSupported(join(pidsCgroup, "memory.swap.max"), "0");
      return pidsCgroup;
    } catch {
      // The controller is listed but not ours to set: try the v1 hierarchy below.
    }
  }
  return createCgroup(cgroupBases("memory"), (dir) => {
    writeFileSync(join(dir, "memory.limit_in_bytes"), String(max));
    writeIfSupported(join(dir, "memory.memsw.limit_in_bytes"), String(max));
  });
}

/**
 * Where this process's cgroups with `controller` live, read from /proc/self/cgroup: the v1
 * hierarchy of that controller, and for `pids` also the v2 unified hierarchy after it.
 */
function cgroupBases(controller: "pids" | "memory"): string[] {
  let lines: string[];
  try {
    lines = readFileSync("/proc/self/cgroup", "utf8").split("\n");
  } catch {
    return [];
  }
  const bases: string[] = [];
  for (const line of lines) {
    const [, controllers, path] = line.split(":", 3) as [string, string | undefined, string | undefined];
    if (path === undefined) continue;
    if (controllers?.split(",").includes(controller)) bases.push(join(`/sys/fs/cgroup/${controller}`, path));
    else if (controller === "pids" && controllers === "") bases.push(join("/sys/fs/cgroup", path), join("/sys/fs/cgroup/unified", path));
  }
  return bases.filter((base) => existsSync(join(base, "cgroup.procs")));
}

/** Removes a cgroup once its processes are gone (they are killed with the sandbox's process group). */
async function removeCgroup(dir: string): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    try {
      rmdirSync(dir);
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

interface DiskWatch {
  /** Fires when the command took more than allowed, or when `outer` fires. */
  signal: AbortSignal;
  /** What was exceeded (`33554432 bytes`, `2000 files`), once it was. */
  exceeded: string | undefined;
  stop(): void;
}

/**
 * Watches the free space and free inodes of the file systems holding `paths` (each counted once)
 * while a command runs, and fires the returned signal once either dropped by more than its limit
 * since the start. No kernel limit bounds the total a process tree writes to a folder without
 * quotas set up by an administrator; the free space of its file system is what a full disk
 * exhausts, and `statfs` reads it in microseconds. Null when both limits are off or nothing can
 * be measured.
 */
async function watchDisk(paths: string[], limits: { bytes: number; files: number }, outer: AbortSignal | undefined): Promise<DiskWatch | null> {
  if (!Number.isFinite(limits.bytes) && !Number.isFinite(limits.files)) return null;
  const devices = new Set<number>();
  const measured: Array<{ path: string; free: number; files: number }> = [];
  for (const path of paths) {
    const [info, space] = await Promise.all([stat(path).catch(() => null), statfs(path).catch(() => null)]);
    if (!info || !space || devices.has(info.dev)) continue;
    devices.add(info.dev);
    measured.push({ path, free: space.bavail * space.bsize, files: space.ffree });
  }
  if (measured.length === 0) return null;
  const controller = new AbortController();
  const onOuter = () => controller.abort();
  if (outer?.aborted) controller.abort();
  else outer?.addEventListener("abort", onOuter, { once: true });
  const watch: DiskWatch = {
    signal: controller.signal,
    exceeded: undefined,
    stop: () => {
      clearInterval(timer);
      outer?.removeEventListener("abort", onOuter);
    },
  };
  let checking = false;
  const timer = setInterval(() => {
    if (checking || watch.exceeded) return;
    checking = true;
    void Promise.all(measured.map(async (start) => ({ start, now: await statfs(start.path).catch(() => null) })))
      .then((readings) => {
        for (const { start, now } of readings) {
          if (!now || watch.exceeded) continue;
          if (start.free - now.bavail * now.bsize > limits.bytes) watch.exceeded = `${limits.bytes} bytes`;
          else if (start.files - now.ffree > limits.files) watch.exceeded = `${limits.files} files`;
        }
        if (watch.exceeded) controller.abort();
      })
      .finally(() => (checking = false));
  }, DISK_CHECK_MS);
  timer.unref();
  return watch;
}
