import { mkdir, open, readFile, rename } from "node:fs/promises";
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

/**
 * Writes snapshots to one file, each atomically (a temporary file renamed over the old one),
 * so a reader, or a process killed mid-write, never sees half a snapshot. `freeze()` keeps the
 * file at the last state written: after an interrupt the agents are stopped and marked
 * aborted, and that state must not replace the last resumable one.
 *
 * @example
 * const file = new SnapshotFile(".git/keen/runs/run_1.json");
 * startTask({ ..., onSnapshot: (snapshot) => file.write(snapshot) });
 */
export class SnapshotFile {
  private frozen = false;
  private dirReady: Promise<unknown> | undefined;
  /** The first write that failed, if any (the run goes on; the caller reports it). */
  error: Error | undefined;
  /** Snapshots written so far. */
  writes = 0;

  constructor(readonly path: string) {}

  async write(snapshot: TaskSnapshot): Promise<void> {
    if (this.frozen) return;
    try {
      this.dirReady ??= mkdir(dirname(this.path), { recursive: true });
      await this.dirReady;
      const temp = `${this.path}.${process.pid}.tmp`;
      // The bytes of each message are kept from the snapshot before: a turn copies them, it does not encode them again.
      const file = await open(temp, "w");
      try {
        await file.writev([encodeSnapshot(snapshot), NEWLINE]);
      } finally {
        await file.close();
      }
      await rename(temp, this.path);
      this.writes += 1;
    } catch (error) {
      this.error ??= error instanceof Error ? error : new Error(String(error));
    }
  }

  freeze(): void {
    this.frozen = true;
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
