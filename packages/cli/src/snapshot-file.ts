import { constants } from "node:fs";
import { lstat, mkdir, open, readFile, rename, rm, type FileHandle } from "node:fs/promises";
import { dirname, isAbsolute, join, resolve, sep } from "node:path";
import { encodeSnapshot, TaskSnapshot } from "@keen/agent-core";
import { UsageError } from "./cli-error.js";
import { loadExeca } from "./lazy-execa.js";

/**
 * Where a run's snapshot goes by default: inside the repository's git directory, so it is
 * never committed and survives worktree clean-ups. `<repo>/.git/keen/runs/<runId>.json`.
 */
export async function defaultSnapshotPath(repo: string, runId: string): Promise<string> {
  const execa = await loadExeca();
  const result = await execa("git", ["rev-parse", "--git-common-dir"], { cwd: repo, reject: false });
  if (result.exitCode !== 0) throw new UsageError(`${repo} is not a git repository`);
  const gitDir = isAbsolute(result.stdout.trim()) ? result.stdout.trim() : resolve(repo, result.stdout.trim());
  return snapshotPathIn(gitDir, runId);
}

/** {@link defaultSnapshotPath} for a repository whose common git dir is known (an opened workspace's `gitCommonDir`). */
export function snapshotPathIn(commonGitDir: string, runId: string): string {
  return join(commonGitDir, "keen", "runs", `${runId}.json`);
}

/** The repository a default snapshot path belongs to (`…/repo/.git/keen/runs/x.json` → `…/repo`). */
export function repoOfSnapshotPath(path: string): string | undefined {
  const marker = `${sep}.git${sep}keen${sep}runs${sep}`;
  const at = resolve(path).lastIndexOf(marker);
  return at > 0 ? resolve(path).slice(0, at) : undefined;
}

const NEWLINE = Buffer.from("\n");

/** A temporary snapshot file, open, with the inode it was created as. */
interface TempFile {
  file: FileHandle;
  ino: number;
  dev: number;
}

/**
 * Writes snapshots to one file, each atomically (a temporary file renamed over the old one),
 * so a reader, or a process killed mid-write, never sees half a snapshot. Writes go one at a
 * time, in the order they were asked for. The temporary file of the next write is created as
 * soon as a write ends, while the run goes on: a turn's snapshot then waits for its bytes and
 * the rename only. `close()` removes that file when no more snapshots come; one left by a
 * process that was killed is named `<file>.<pid>.tmp`, and `keen runs --prune` removes it.
 *
 * `freeze()` keeps the file at the last state written: after an interrupt the agents are
 * stopped and marked aborted, and that state must not replace the last resumable one.
 *
 * @example
 * const file = new SnapshotFile(".git/keen/runs/run_1.json");
 * startTask({ ..., onSnapshot: (snapshot) => file.write(snapshot) });
 * // when the run has ended:
 * await file.close();
 */
export class SnapshotFile {
  private frozen = false;
  private dirReady: Promise<unknown> | undefined;
  /** The temporary file of the next write, created ahead. */
  private ahead: Promise<TempFile | undefined> | undefined;
  private queue: Promise<void> = Promise.resolve();
  /** The first write that failed, if any (the run goes on; the caller reports it). */
  error: Error | undefined;
  /** Snapshots written so far. */
  writes = 0;

  constructor(readonly path: string) {}

  private get temp(): string {
    return `${this.path}.${process.pid}.tmp`;
  }

  /** Writes `snapshot` after every write asked before it; ignored once frozen or closed. Never rejects: a failure sets `error`. */
  write(snapshot: TaskSnapshot): Promise<void> {
    if (this.frozen) return this.queue;
    const written = this.queue.then(() => this.writeNow(snapshot));
    this.queue = written;
    return written;
  }

  private async writeNow(snapshot: TaskSnapshot): Promise<void> {
    try {
      this.dirReady ??= mkdir(dirname(this.path), { recursive: true });
      await this.dirReady;
      const bytes = encodeSnapshot(snapshot);
      const early = await this.takeAhead();
      // The file made ahead may have been removed or replaced meanwhile: then once more, made now.
      if (!(early && (await this.replace(early, bytes)))) {
        if (!(await this.replace(await this.createTemp(), bytes))) throw new Error(`${this.temp} was replaced while the snapshot was written to it`);
      }
      this.writes += 1;
      if (!this.frozen) this.ahead = this.createTemp().catch(() => undefined);
    } catch (error) {
      this.error ??= error instanceof Error ? error : new Error(String(error));
      await rm(this.temp, { force: true }).catch(() => {});
    }
  }

  /**
   * A new temporary file, never through a link: whatever holds its name (a file left by a killed
   * process of the same id, a link someone put there) is removed first, never written through.
   */
  private async createTemp(): Promise<TempFile> {
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
    let file: FileHandle;
    try {
      file = await open(this.temp, flags, 0o666);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      await rm(this.temp, { force: true });
      file = await open(this.temp, flags, 0o666);
    }
    // Which file it is, read once here (ahead of the write it serves), not on the turn's path.
    const { ino, dev } = await file.stat();
    return { file, ino, dev };
  }

  /**
   * Writes the snapshot's bytes to `file` and renames it over the snapshot, if `file` is still
   * what the temporary name holds (false, and nothing renamed, if not). A write the file system
   * cuts short goes on where it stopped, or fails: a part of a snapshot never replaces a whole one.
   */
  private async replace({ file, ino, dev }: TempFile, bytes: Uint8Array): Promise<boolean> {
    try {
      const { bytesWritten } = await file.writev([bytes, NEWLINE]);
      if (bytesWritten < bytes.length + NEWLINE.length) await writeRest(file, Buffer.concat([bytes, NEWLINE]), bytesWritten);
    } finally {
      await file.close();
    }
    const named = await lstat(this.temp).catch(() => undefined);
    if (!named || named.ino !== ino || named.dev !== dev) return false;
    await rename(this.temp, this.path);
    return true;
  }

  private takeAhead(): Promise<TempFile | undefined> {
    const ahead = this.ahead ?? Promise.resolve(undefined);
    this.ahead = undefined;
    return ahead;
  }

  /** Removes the file made ahead for a next write, and anything left under its name. */
  private async discardAhead(): Promise<void> {
    const temp = await this.takeAhead();
    await temp?.file.close().catch(() => {});
    await rm(this.temp, { force: true }).catch(() => {});
  }

  /** Keeps the file at the last state written: writes asked from now on are ignored; those asked before still land. */
  freeze(): void {
    if (this.frozen) return;
    this.frozen = true;
    this.queue = this.queue.then(() => this.discardAhead());
  }

  /** No more snapshots: waits for the writes asked for, then removes the temporary file. Writes asked later are ignored. */
  async close(): Promise<void> {
    this.frozen = true;
    await this.queue;
    await this.discardAhead();
  }
}

/** Writes `bytes` from `offset` on, until all are written or the file system refuses. */
async function writeRest(file: FileHandle, bytes: Buffer, offset: number): Promise<void> {
  while (offset < bytes.length) {
    const { bytesWritten } = await file.write(bytes, offset, bytes.length - offset);
    if (bytesWritten === 0) throw new Error("the file system wrote nothing of the snapshot");
    offset += bytesWritten;
  }
}

/**
 * Reads and validates a snapshot file written by `keen run`.
 * Throws a {@link UsageError} with a one-line reason when it is missing or not a snapshot.
 */
export async function readSnapshotFile(path: string): Promise<TaskSnapshot> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new UsageError(`cannot read snapshot ${path}${code === "ENOENT" ? ": no such file" : `: ${(error as Error).message}`}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new UsageError(`${path} is not a keen run snapshot (not valid JSON)`);
  }
  const parsed = TaskSnapshot.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new UsageError(`${path} is not a keen run snapshot (${issue.path.join(".") || "top level"}: ${issue.message})`);
  }
  return parsed.data;
}
