import { execFile } from "node:child_process";
import { lstat } from "node:fs/promises";
import { isAbsolute } from "node:path";
import { withoutRepositoryVariables } from "./git.js";
import { launchGit } from "./git-launcher.js";

/** The folders marked in this process, by path, with the inode that was marked. */
const marked = new Map<string, { ino: number; done: Promise<void> }>();

/** Longest wait for `chattr` when it is spawned directly; on a file system that hangs on it the fork goes on unmarked. */
const CHATTR_TIMEOUT_MS = 5_000;

/**
 * Marks `dir` as the top of a folder hierarchy for ext2/3/4's inode allocator (`chattr +T`), once
 * per folder and process: each folder made in it then starts in a block group of its own, chosen
 * among those with room, instead of in `dir`'s group beside its siblings.
 *
 * keen makes a worktree folder in the same parent for every fork and deletes it at dispose. On an
 * ext4 without a journal (common on virtual machines and CI images), the allocator skips every
 * inode freed in the last 60 seconds (300 while its inode table block is unwritten) and looks each
 * one up to do so. A worktree made where the last ones were deleted then pays for every file they
 * held: creating 2,000 files took 3–4× as long right after 2,000 were deleted beside them as in a
 * fresh group (`perf` shows the time in `recently_deleted`). Elsewhere the mark changes nothing
 * measurable; where the file system has no such flag (or `chattr` is missing, or the folder is not
 * this user's) nothing is marked and nothing fails.
 */
export async function spreadSubfolders(dir: string): Promise<void> {
  if (process.platform !== "linux" || !isAbsolute(dir)) return;
  const info = await lstat(dir).catch(() => null);
  if (!info?.isDirectory()) return;
  const known = marked.get(dir);
  if (known && known.ino === info.ino) return known.done;
  // An absolute path never reads as chattr's own `-`/`+`/`=` arguments. Started as keen's git
  // calls are (a fork of keen's own process costs its main thread 10-30 ms), or else directly.
  const args = ["+T", dir];
  const env = withoutRepositoryVariables();
  const launched = launchGit({ program: "chattr", args, cwd: dir, env, maxOutput: 64 * 1024, command: "chattr" }, withoutRepositoryVariables);
  const done = launched
    ? launched.then(
        () => {},
        () => {},
      )
    : new Promise<void>((settle) => {
        execFile("chattr", args, { env, timeout: CHATTR_TIMEOUT_MS, windowsHide: true }, () => settle());
      });
  marked.set(dir, { ino: info.ino, done });
  return done;
}
