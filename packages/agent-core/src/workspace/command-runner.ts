import { spawn } from "node:child_process";
import type { ExecResult } from "./workspace.js";

export interface CommandRunOptions {
  /** Absolute working directory (already confined by the workspace). */
  cwd: string;
  timeoutMs: number;
  maxOutputBytes: number;
  env?: Record<string, string>;
  signal?: AbortSignal;
  /**
   * The workspace's root folder (the agent's checkout). A sandboxed runner leaves only this
   * folder writable. Defaults to `cwd`.
   */
  root?: string;
  /**
   * Folders the command needs to read even where a sandbox hides the rest of their parent, such
   * as a worktree's common git dir. A sandboxed runner mounts them read-only.
   */
  readOnlyPaths?: string[];
  /**
   * Files shown in place of others, read-only: `{ path, source }` makes the command see the
   * content of host file `source` at `path` (the repository's git config with its credentials
   * removed, say). Only a sandboxed runner can do this; others run with the real files.
   */
  replaceFiles?: Array<{ path: string; source: string }>;
  /** Mount `root` read-only too. Only runners with `enforcesReadOnly` may be asked for this. */
  readOnly?: boolean;
  /**
   * The spawned process's whole environment, instead of keen's own plus `env`. A sandbox runner
   * starts bubblewrap this way so nothing of keen's environment is visible inside.
   */
  replaceEnv?: Record<string, string>;
}

/**
 * Runs shell commands for a workspace. The local runner is the default; a sandboxed runner
 * (bubblewrap) plugs in through the same interface.
 */
export interface CommandRunner {
  run(command: string, options: CommandRunOptions): Promise<ExecResult>;
  /**
   * True when `run` guarantees that a `readOnly` command cannot change the workspace. A workspace
   * refuses read-only commands on a runner without it rather than pretend.
   */
  readonly enforcesReadOnly?: boolean;
}

/** Grace period between SIGTERM and SIGKILL for a timed-out or aborted process tree. */
const KILL_GRACE_MS = 500;

/**
 * Runs `/bin/sh -c command` in its own process group, so a timeout or an abort kills the whole
 * tree (grandchildren included), not just the shell.
 *
 * @example
 * const result = await localCommandRunner.run("npm test", { cwd: root, timeoutMs: 60_000, maxOutputBytes: 100_000 });
 */
export const localCommandRunner: CommandRunner = {
  run: (command, options) => runInProcessGroup("/bin/sh", ["-c", command], options),
};

/**
 * Spawns `file args` detached (a new process group) and collects capped, interleaved output.
 * `fd3`, when given, is written to a pipe the process reads as file descriptor 3 (bubblewrap
 * takes its seccomp program that way).
 */
export function runInProcessGroup(file: string, args: string[], options: CommandRunOptions, fd3?: Buffer): Promise<ExecResult> {
  const started = performance.now();
  return new Promise<ExecResult>((resolve) => {
    const output = new CappedOutput(options.maxOutputBytes);
    let timedOut = false;
    let aborted = false;
    let settled = false;
    let killTimer: NodeJS.Timeout | undefined;

    const child = spawn(file, args, {
      cwd: options.cwd,
      env: options.replaceEnv ?? { ...process.env, ...options.env },
      detached: true,
      stdio: fd3 ? ["ignore", "pipe", "pipe", "pipe"] : ["ignore", "pipe", "pipe"],
    });
    if (fd3) {
      const input = child.stdio[3] as NodeJS.WritableStream & { on(event: "error", listener: () => void): unknown };
      // The process may exit before reading it (bwrap failing early); that is reported through its exit.
      input.on("error", () => {});
      input.end(fd3);
    }

    const killTree = () => {
      if (child.pid === undefined) return;
      signalGroup(child.pid, "SIGTERM");
      killTimer = setTimeout(() => signalGroup(child.pid!, "SIGKILL"), KILL_GRACE_MS);
      killTimer.unref();
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killTree();
    }, options.timeoutMs);
    const onAbort = () => {
      aborted = true;
      killTree();
    };
    if (options.signal?.aborted) onAbort();
    else options.signal?.addEventListener("abort", onAbort, { once: true });

    child.stdout!.on("data", (chunk: Buffer) => output.push(chunk));
    child.stderr!.on("data", (chunk: Buffer) => output.push(chunk));

    const finish = (exitCode: number | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      // Grandchildren may still hold the pipes open; make sure none outlives the command.
      if (child.pid !== undefined) signalGroup(child.pid, "SIGKILL");
      if (killTimer) clearTimeout(killTimer);
      resolve({
        exitCode,
        output: output.text(),
        timedOut,
        aborted,
        truncated: output.truncated,
        durationMs: Math.round(performance.now() - started),
      });
    };
    child.on("error", (error) => {
      output.push(Buffer.from(`${error.message}\n`));
      finish(null);
    });
    // 'exit' rather than 'close': a background grandchild keeping stdout open must not hang us.
    child.on("exit", (code) => setImmediate(() => finish(code)));
  });
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // The group is already gone.
  }
}

/** Keeps the first and last halves of the output when it exceeds the cap, and says how much was cut. */
class CappedOutput {
  private head: Buffer[] = [];
  private headBytes = 0;
  private tail: Buffer[] = [];
  private tailBytes = 0;
  private dropped = 0;
  constructor(private readonly maxBytes: number) {}

  get truncated(): boolean {
    return this.dropped > 0;
  }

  push(chunk: Buffer): void {
    const headRoom = Math.ceil(this.maxBytes / 2) - this.headBytes;
    if (headRoom > 0) {
      const part = chunk.subarray(0, headRoom);
      this.head.push(part);
      this.headBytes += part.length;
      chunk = chunk.subarray(part.length);
      if (chunk.length === 0) return;
    }
    this.tail.push(chunk);
    this.tailBytes += chunk.length;
    const tailMax = Math.floor(this.maxBytes / 2);
    while (this.tailBytes > tailMax && this.tail.length > 0) {
      const first = this.tail[0]!;
      const excess = this.tailBytes - tailMax;
      if (first.length <= excess) {
        this.tail.shift();
        this.tailBytes -= first.length;
        this.dropped += first.length;
      } else {
        this.tail[0] = first.subarray(excess);
        this.tailBytes -= excess;
        this.dropped += excess;
      }
    }
  }

  text(): string {
    const head = Buffer.concat(this.head).toString("utf8");
    const tail = Buffer.concat(this.tail).toString("utf8");
    if (!this.dropped) return head + tail;
    return `${head}\n[… ${this.dropped} bytes of output truncated …]\n${tail}`;
  }
}
