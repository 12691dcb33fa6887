import { access, lstat } from "node:fs/promises";
import { join } from "node:path";
import { quote } from "./task-session.js";
import { loadExeca } from "./lazy-execa.js";

/** What `--apply` did: merged the run branch, or why it left the user's checkout alone. */
export interface ApplyOutcome {
  applied: boolean;
  /** One line for the user: what happened, or why not and how to take the result by hand. */
  message: string;
}

// Optional locks off: keen's `git status` never rewrites the index of the user's checkout.
const git = async (repo: string, args: string[]) => (await loadExeca())("git", ["-c", "core.fsmonitor=false", ...args], { cwd: repo, reject: false, env: { GIT_OPTIONAL_LOCKS: "0" } });

/**
 * Merges a finished run's branch into the branch checked out in `repo`, only when that is safe:
 * a branch (not a detached HEAD) is checked out, it still contains the commit the run started
 * from (`base`), nothing is modified, staged or untracked, and no merge, rebase or cherry-pick is
 * under way. The merge is first computed without touching the checkout (`git merge-tree`): one
 * that would conflict is refused before anything is written, so no interruption can leave the
 * checkout half-merged. The merge never overwrites an ignored file of the checkout. When git
 * still fails, the merge is aborted, leaving the checkout as it was; the user is told how to take
 * the result instead.
 *
 * @example
 * const outcome = await applyRunBranch("/home/me/app", "keen/2da1fb95");
 * console.log(outcome.message); // "applied: merged keen/2da1fb95 into main (fast-forward)"
 */
export async function applyRunBranch(repo: string, runBranch: string, base?: string): Promise<ApplyOutcome> {
  const byHand = `take it with: git -C ${quote(repo)} merge ${runBranch}`;
  const current = await git(repo, ["symbolic-ref", "--quiet", "--short", "HEAD"]);
  if (current.exitCode !== 0) return { applied: false, message: `not applied: ${repo} has no branch checked out (detached HEAD); ${byHand}` };
  const branch = current.stdout.trim();
  if (branch === runBranch) return { applied: false, message: `not applied: ${runBranch} is itself checked out in ${repo}` };
  // The branch itself, never a tag or another ref of the same short name.
  const runRef = `refs/heads/${runBranch}`;
  const runCommit = await git(repo, ["rev-parse", "--verify", "--quiet", `${runRef}^{commit}`]);
  if (runCommit.exitCode !== 0) return { applied: false, message: `not applied: ${runBranch} is not a branch of ${repo}` };
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
  const before = (await git(repo, ["rev-parse", "HEAD"])).stdout.trim();
  if (base && (await git(repo, ["merge-base", "--is-ancestor", base, before])).exitCode !== 0) {
    return {
      applied: false,
      message: `not applied: ${branch} in ${repo} does not contain ${base.slice(0, 12)}, the commit the run started from (another branch is checked out, or it was reset); merging would bring in more than the run's work. ${byHand}`,
    };
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
  const review = `Review it with git -C ${quote(repo)} diff ${branch}...${runBranch}, then ${byHand}`;
  // The merge computed in the object store only: a conflict is found before the checkout is touched.
  const trial = await git(repo, ["merge-tree", "--write-tree", "--no-messages", before, runCommit.stdout.trim()]);
  if (trial.exitCode === 1) return { applied: false, message: `not applied: it conflicts with ${branch}; nothing was changed. ${review}` };
  if (trial.exitCode === 0) {
    // Files the merge adds where the checkout already has one git ignores: git would overwrite it.
    const added = await git(repo, ["diff", "--name-only", "-z", "--no-renames", "--diff-filter=A", before, trial.stdout.trim()]);
    const present = [];
    for (const path of added.stdout.split("\0").filter(Boolean)) if (await lexists(join(repo, path))) present.push(path);
    if (present.length) {
      const more = present.length > 3 ? ` and ${present.length - 3} more` : "";
      return { applied: false, message: `not applied: it would overwrite ignored files of ${branch} (${present.slice(0, 3).join(", ")}${more}); nothing was changed. ${review}` };
    }
  }
  const merged = await git(repo, ["merge", "--no-edit", "--no-stat", "--no-overwrite-ignore", "-m", mergeMessage(runBranch, branch), runRef]);
  if (merged.exitCode !== 0) {
    // Leave the checkout exactly as it was.
    if (await exists(join(gitDir, "MERGE_HEAD"))) {
      const aborted = await git(repo, ["merge", "--abort"]);
      if (aborted.exitCode !== 0) await git(repo, ["reset", "--merge", before]);
    } else if ((await git(repo, ["rev-parse", "HEAD"])).stdout.trim() !== before) await git(repo, ["reset", "--merge", before]);
    const why = /CONFLICT/.test(merged.stdout)
      ? "it conflicts with "
      : /would be overwritten/i.test(`${merged.stdout}\n${merged.stderr}`)
        ? "it would overwrite ignored files of "
        : "git could not merge it into ";
    return { applied: false, message: `not applied: ${why}${branch}; nothing was changed. ${review}` };
  }
  const after = (await git(repo, ["rev-parse", "HEAD"])).stdout.trim();
  const how = after === before ? "already up to date" : (await git(repo, ["rev-parse", `${after}^2`])).exitCode === 0 ? "merge commit" : "fast-forward";
  return { applied: true, message: `applied: merged ${runBranch} into ${branch} (${how}${after !== before ? `, now at ${after.slice(0, 10)}` : ""})` };
}

/** git's own wording for merging a branch by its short name. */
function mergeMessage(runBranch: string, into: string): string {
  return `Merge branch '${runBranch}'${into === "main" || into === "master" ? "" : ` into ${into}`}`;
}

async function lexists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
