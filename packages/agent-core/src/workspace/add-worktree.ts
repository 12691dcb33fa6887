import { lstat, mkdir, readdir, realpath, rm, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { KeenError } from "../errors.js";
import { git, gitFailure, gitRaw, type GitTarget } from "./git.js";

export interface NewWorktree {
  /** The repository's common git dir. */
  commonDir: string;
  /** Git calls on the repository itself (its main checkout). */
  main: GitTarget;
  /** Folder of the new worktree: must not exist, or be empty. */
  dir: string;
  /** The branch to create; it must not exist yet. */
  branch: string;
  /** Commit id the branch starts at. */
  commit: string;
  /** Written as the reason of the worktree's lock (keen's lease). */
  lockReason: string;
}

/**
 * What `git worktree add --no-checkout --lock --reason R -b BRANCH DIR COMMIT` does, in one git
 * process instead of three (`worktree add` starts `git branch` and `git symbolic-ref` itself):
 * the branch is created with `update-ref` (only if it does not exist, so two processes cannot
 * both take a name), and the worktree is registered with the files git writes for it, in git's
 * order, the lock first (gitrepository-layout(5): `worktrees/<id>/locked`, `gitdir`, `HEAD`,
 * `commondir`, and the worktree's `.git` file). Nothing is checked out. Where the refs are not
 * plain files (a reftable repository) `git worktree add` does it all instead.
 */
export async function addWorktree(spec: NewWorktree): Promise<void> {
  const { commonDir, main, dir, branch, commit, lockReason } = spec;
  if ((await lstat(join(commonDir, "reftable")).catch(() => null)) !== null) {
    await git(main, ["worktree", "add", "-q", "--no-checkout", "--lock", "--reason", lockReason, "-b", branch, dir, commit]);
    return;
  }
  const existing = await readdir(dir).catch((error: NodeJS.ErrnoException) => (error.code === "ENOENT" ? [] : Promise.reject(error)));
  if (existing.length > 0) throw new KeenError("git_failed", `git worktree add failed: '${dir}' already exists`);
  const created = await gitRaw(main, ["update-ref", "-m", `branch: Created from ${commit}`, `refs/heads/${branch}`, commit, ""]);
  if (created.exitCode !== 0) {
    if (/already exists/.test(created.stderr)) throw new KeenError("branch_exists", `Branch "${branch}" cannot be created: refs/heads/${branch} exists`);
    throw gitFailure(["update-ref"], created);
  }
  let admin: string | undefined;
  try {
    admin = await makeAdminDir(join(commonDir, "worktrees"), basename(dir));
    await writeFile(join(admin, "locked"), `${lockReason}\n`);
    await mkdir(dir, { recursive: true });
    const root = await realpath(dir);
    await writeFile(join(admin, "gitdir"), `${join(root, ".git")}\n`);
    await writeFile(join(dir, ".git"), `gitdir: ${await realpath(admin)}\n`);
    await writeFile(join(admin, "HEAD"), `ref: refs/heads/${branch}\n`);
    await writeFile(join(admin, "commondir"), "../..\n");
  } catch (error) {
    // Leave nothing half made: no registration, no folder, no branch.
    if (admin) await rm(admin, { recursive: true, force: true });
    await rm(dir, { recursive: true, force: true });
    await gitRaw(main, ["update-ref", "-d", `refs/heads/${branch}`, commit]);
    throw new KeenError("git_failed", `git worktree add failed: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** `<worktrees>/<name>`, or `<name>1`, `<name>2`, … when taken, created the way git picks the id. */
async function makeAdminDir(worktrees: string, name: string): Promise<string> {
  await mkdir(worktrees, { recursive: true });
  for (let counter = 0; ; counter++) {
    const path = join(worktrees, counter === 0 ? name : `${name}${counter}`);
    try {
      await mkdir(path);
      return path;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
  }
}
