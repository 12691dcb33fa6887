import { link, mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { KeenError } from "../errors.js";
import { isLeaseLive, ownLease, parseLease } from "./worktree-recovery.js";

/** How long a process waits for another live process's repository lock. */
const WAIT_MS = 60_000;
const POLL_MS = 25;

/** In-process queue per repository: one task at a time holds the file lock. */
const queues = new Map<string, Promise<unknown>>();

/**
 * Runs `task` while holding the repository lock of `commonDir`: serialised with other tasks of
 * this process (a promise queue) and with other processes through a lock file
 * (`<common dir>/keen/repo.lock`) created with O_EXCL and holding the owner's lease. A lock
 * whose owner is dead is taken over at once; a live owner's is waited for (up to a minute, then
 * code `repository_busy`).
 */
export function withRepoLock<T>(commonDir: string, task: () => Promise<T>): Promise<T> {
  const previous = queues.get(commonDir) ?? Promise.resolve();
  const next = previous.catch(() => {}).then(async () => {
    const release = await acquireFileLock(commonDir);
    try {
      return await task();
    } finally {
      await release();
    }
  });
  queues.set(commonDir, next.catch(() => {}));
  return next;
}

async function acquireFileLock(commonDir: string): Promise<() => Promise<void>> {
  const dir = join(commonDir, "keen");
  const path = join(dir, "repo.lock");
  await mkdir(dir, { recursive: true });
  const lease = ownLease();
  const deadline = Date.now() + WAIT_MS;
  let unreadable = 0;
  while (true) {
    try {
      await writeFile(path, `${lease}\n`, { flag: "wx" });
      return () => rm(path, { force: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
    const text = await readFile(path, "utf8").catch(() => null);
    if (text === null) continue; // Released while we looked.
    const holder = parseLease(text);
    if (holder && isLeaseLive(holder)) {
      if (Date.now() > deadline) {
        throw new KeenError("repository_busy", `Another keen process (pid ${holder.pid}) holds the lock of ${commonDir}; try again when it is done`);
      }
      await delay(POLL_MS);
      continue;
    }
    // No complete lease yet: its owner may be writing it right now; give it a moment before calling it corrupt.
    if (!holder && !text.endsWith("\n") && ++unreadable < 40) {
      await delay(POLL_MS);
      continue;
    }
    // A dead owner's (or corrupt) lock: move it aside, and put back whatever was moved if it turns out to be a fresh one.
    const aside = `${path}.${randomBytes(4).toString("hex")}.stale`;
    if (await rename(path, aside).then(() => true, () => false)) {
      const moved = await readFile(aside, "utf8").catch(() => text);
      if (moved !== text) await link(aside, path).catch(() => {});
      await rm(aside, { force: true });
    }
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
