import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { OBJECT_ID } from "./refs.js";

const BRANCH_REF = /^ref: (refs\/heads\/[^\n]+)\n?$/;

/**
 * The commit id HEAD names, read from the git dir's files instead of a `git rev-parse`
 * subprocess: `HEAD` of the worktree's git dir, then the branch's loose ref in the common dir,
 * then `packed-refs`. Returns undefined whenever the files do not answer plainly (an unborn
 * branch, a symbolic ref outside `refs/heads`, a reftable repository, an unreadable file), and
 * the caller asks git. Nothing is verified: the id is not checked to name a commit.
 *
 * @example
 * const sha = (await readHeadFromFiles(gitDir, commonDir)) ?? (await askGit());
 */
export async function readHeadFromFiles(gitDir: string, commonDir: string): Promise<string | undefined> {
  const head = await readText(join(gitDir, "HEAD"));
  if (!head) return undefined;
  const detached = head.trim();
  if (OBJECT_ID.test(detached)) return detached;
  const ref = BRANCH_REF.exec(head)?.[1];
  if (!ref || ref.split("/").some((part) => part === "" || part === "." || part === "..")) return undefined;
  const loose = await readText(join(commonDir, ref));
  if (loose !== null) {
    const id = loose.trim();
    return OBJECT_ID.test(id) ? id : undefined;
  }
  const packed = await readText(join(commonDir, "packed-refs"));
  if (!packed) return undefined;
  for (const line of packed.split("\n")) {
    const space = line.indexOf(" ");
    if (space > 0 && line.slice(space + 1) === ref) {
      const id = line.slice(0, space);
      return OBJECT_ID.test(id) ? id : undefined;
    }
  }
  return undefined;
}

async function readText(path: string): Promise<string | null> {
  try {
    return await readFile(path, "utf8");
  } catch {
    return null;
  }
}
