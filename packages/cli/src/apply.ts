import { access } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { quote } from "./task-session.js";

/** What `--apply` did: merged the run branch, or why it left the user's checkout alone. */
export interface ApplyOutcome {
  applied: boolean;
  /** One line for the user: what happened, or why not and how to take the result by hand. */
  message: string;
}

const git = (repo: string, args: string[]) => execa("git", ["-c", "core.fsmonitor=false", ...args], { cwd: repo, reject: false });

/**
 * Merges a finished run's branch into the branch checked out in `repo`, only when that is safe:
 * a branch (not a detached HEAD) is checked out, nothing is modified, staged or untracked, and no
 * merge, rebase or cherry-pick is under way. A merge that conflicts is aborted, leaving the
 * checkout as it was; the user is told how to take the result instead.
 *
 * @example
 * const outcome = await applyRunBranch("/home/me/app", "keen/2da1fb95");
 * console.log(outcome.message); // "applied: merged keen/2da1fb95 into main (fast-forward)"
 */
export async function applyRunBranch(repo: string, runBranch: string): Promise<ApplyOutcome> {
  const byHand = `take it with: git -C ${quote(repo)} merge ${runBranch}`;
  const current = await git(repo, ["symbolic-ref", "--quiet", "--short", "HEAD"]);
  if (current.exitCode !== 0) return { applied: false, message: `not applied: ${repo} has no branch checked out (detached HEAD); ${byHand}` };
  const branch = current.stdout.trim();
  if (branch === runBranch) return { applied: false, message: `not applied: ${runBranch} is itself checked out in ${repo}` };
  const gitDir = (await git(repo, ["rev-parse", "--absolute-git-dir"])).stdout.trim();
  for (const [marker, what] of [
    ["MERGE_HEAD", "a merge"],
    ["rebase-merge", "a rebase"],
    ["rebase-apply", "a rebase"],
    ["CHERRY_PICK_HEAD", "a cherry-pick"],
    ["REVERT_HEAD", "a revert"],
  ] as const) {
    if (await exists(join(gitDir, marker))) {
      return { applied: false, message: `not applied: ${what} is under way in ${repo}; finish it, then ${byHand}` };
    }
  }
  const status = await git(repo, ["status", "--porcelain=v1", "-z", "--untracked-files=normal"]);
  if (status.exitCode !== 0) return { applied: false, message: `not applied: git status failed in ${repo}; ${byHand}` };
  const changed = status.stdout.split("\0").filter((entry) => entry.length > 3);
  if (changed.length) {
    const names = changed.slice(0, 3).map((entry) => entry.slice(3));
    const more = changed.length > 3 ? ` and ${changed.length - 3} more` : "";
    return {
      applied: false,
      message: `not applied: ${repo} has uncommitted or untracked files (${names.join(", ")}${more}); commit or stash them, then ${byHand}`,
    };
  }
  const before = (await git(repo, ["rev-parse", "HEAD"])).stdout.trim();
  const merged = await git(repo, ["merge", "--no-edit", "--no-stat", runBranch]);
  if (merged.exitCode !== 0) {
    // Leave the checkout exactly as it was.
    const aborted = await git(repo, ["merge", "--abort"]);
    if (aborted.exitCode !== 0) await git(repo, ["reset", "--merge", before]);
    const conflict = /CONFLICT/.test(merged.stdout) ? "it conflicts with " : "git could not merge it into ";
    return { applied: false, message: `not applied: ${conflict}${branch}; nothing was changed. Review it with git -C ${quote(repo)} diff ${branch}...${runBranch}, then ${byHand}` };
  }
  const after = (await git(repo, ["rev-parse", "HEAD"])).stdout.trim();
  const how = after === before ? "already up to date" : (await git(repo, ["rev-parse", `${after}^2`])).exitCode === 0 ? "merge commit" : "fast-forward";
  return { applied: true, message: `applied: merged ${runBranch} into ${branch} (${how}${after !== before ? `, now at ${after.slice(0, 10)}` : ""})` };
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
