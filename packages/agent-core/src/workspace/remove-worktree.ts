import { lstat, readFile, realpath, rm, rmdir, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { KeenError } from "../errors.js";
import { oneLine } from "./git.js";
import { removeFolder } from "./remove-folder.js";
import { isInside } from "./is-inside.js";

export interface KeenWorktree {
  /** The repository's common git dir (real path). */
  commonDir: string;
  /** keen's worktrees folder: no folder outside it is ever removed. */
  worktreesDir: string;
  /** The worktree's folder, as keen made or moved it (never a path read from the worktree). */
  root: string;
  /** The worktree's own git dir, `<commonDir>/worktrees/<id>`, as found from the common dir. */
  gitDir: string;
}

/**
 * What `git worktree remove --force --force <root>` does, without starting git: the worktree's
 * folder is deleted, then its registration (`<common>/worktrees/<id>`, the lock with it), then
 * `<common>/worktrees` when that was the last one. Git's order: a crash in between leaves a
 * registration without a folder, which `git worktree prune` and keen's recovery pass remove.
 *
 * Nothing the agent can write steers it. The registration is `gitDir`, found from the common dir
 * by the caller, and must name `<root>/.git` in its own `gitdir` file; the worktree's `.git`
 * file is never read. The folder is deleted without following symbolic links: a link inside is
 * unlinked, and a folder replaced by a link loses only the link.
 *
 * Refuses (`not_a_keen_worktree`, nothing removed) a folder outside `worktreesDir`, or one whose
 * parent folders lead out of it, and a git dir outside `<common>/worktrees`. Returns false,
 * having removed nothing, when the registration does not name this folder, and when the folder
 * could not be deleted (some of it may be gone): the caller then lets git do it.
 */
export async function removeWorktreeInProcess(worktree: KeenWorktree): Promise<boolean> {
  const { root, gitDir } = worktree;
  await assertKeenWorktree(worktree);
  const registered = await readFile(join(gitDir, "gitdir"), "utf8").catch(() => null);
  if (registered === null || oneLine(registered) !== join(root, ".git")) return false;
  if (!(await lstat(gitDir).catch(() => null))?.isDirectory()) return false;

  const folder = await lstat(root).catch((error: NodeJS.ErrnoException) => (error.code === "ENOENT" ? null : undefined));
  if (folder === undefined) return false;
  try {
    // A link where the folder was is unlinked, not followed; inside the folder, every link met is unlinked.
    if (folder?.isDirectory()) await removeFolder(root);
    else if (folder) await unlink(root);
  } catch {
    return false;
  }
  await rm(gitDir, { recursive: true, force: true });
  // Git drops the folder with its last worktree; recovery reads an absent or empty one as "none".
  await rmdir(dirname(gitDir)).catch(() => {});
  return true;
}

/** Throws `not_a_keen_worktree` unless `root` lies in keen's worktrees folder and `gitDir` is a registration of the repository. */
async function assertKeenWorktree({ commonDir, worktreesDir, root, gitDir }: KeenWorktree): Promise<void> {
  if (dirname(gitDir) !== join(commonDir, "worktrees")) {
    throw new KeenError("not_a_keen_worktree", `${gitDir} is not a worktree registration of ${commonDir}; nothing was removed`);
  }
  const realDir = await realpath(worktreesDir).catch(() => worktreesDir);
  // Where the folder really is: its parent folders resolved (a parent that is gone holds nothing to delete).
  const parent = await realpath(dirname(root)).catch((error: NodeJS.ErrnoException) => (error.code === "ENOENT" ? undefined : null));
  const landsInside = parent === undefined || (parent !== null && (parent === realDir || isInside(realDir, parent)));
  if (!landsInside || !(isInside(worktreesDir, root) || isInside(realDir, root))) {
    throw new KeenError("not_a_keen_worktree", `${root} is not in keen's worktrees folder (${worktreesDir}); nothing was removed`);
  }
}
