import { readdir } from "node:fs/promises";
import { join, relative } from "node:path";
import { execa } from "execa";
import { TEST_GIT_IDENTITY } from "../test-repo.js";

/** git's trimmed stdout in `dir` (a failing command answers what it printed, not an error). */
export const gitOutput = async (dir: string, ...args: string[]) => (await execa("git", args, { cwd: dir, env: TEST_GIT_IDENTITY, reject: false })).stdout.trim();

/** The files `ref`'s tree holds, sorted. */
export const treeFiles = async (dir: string, ref: string) => (await gitOutput(dir, "ls-tree", "-r", "--name-only", ref)).split("\n").filter(Boolean).sort();

/** The regular files below `root` (outside `.git`), relative and sorted. */
export async function filesOnDisk(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile())
    .map((entry) => relative(root, join(entry.parentPath, entry.name)))
    .filter((path) => path !== ".git" && !path.startsWith(".git/"))
    .sort();
}
