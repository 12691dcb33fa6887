import { stat, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { LocalWorkspace } from "../local-workspace.js";

/**
 * Commits `committed` at `path` in `fork`, lets the index be written again a second later (a commit
 * of `other`), then rewrites `path` with `planted` (the same length) and puts its times back: a
 * change only ctime shows, once the index is newer than the file (so git does not re-read the
 * entry as racy).
 */
export async function plantHiddenRewrite(
  fork: LocalWorkspace,
  path: string,
  contents: { committed: string; planted: string; other: [path: string, text: string] },
): Promise<void> {
  if (contents.committed.length !== contents.planted.length) throw new Error("the planted text must keep the committed length");
  await fork.writeFile(path, contents.committed);
  await fork.commit(`sets ${path}`);
  const file = join(fork.root, path);
  const { atime, mtime } = await stat(file);
  await new Promise((resolve) => setTimeout(resolve, 1100));
  await fork.writeFile(...contents.other);
  await fork.commit(`sets ${contents.other[0]}`);
  await writeFile(file, contents.planted);
  await utimes(file, atime, mtime);
}
