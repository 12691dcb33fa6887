import { AbortedError, KeenError } from "../errors.js";
import type { Workspace, ForkableWorkspace, MergeResult } from "../workspace/workspace.js";
import { builtinTools } from "../tools/index.js";
import { agentTag } from "./agent-tag.js";
import { appendUserText, converse } from "./converse.js";
import { stopsTheRun } from "./interruption.js";
import { completeMergeTool } from "./phase-tools.js";
import { commitAndReport, commitMessage } from "./commits.js";
import type { AgentState, MergeState } from "./task-state.js";
import type { AgentTree } from "./tree.js";

const VALIDATION_OUTPUT_LIMIT = 4_000;

/** One validation command and who asked for it. */
export interface ValidationCheck {
  command: string;
  source: "user" | "plan";
}

/**
 * The checks that guard an agent's work: the user's validation always, then the agent's plan's
 * own command when it differs. A plan may add a check; it can never replace or weaken the user's.
 */
export function validationChecks(tree: AgentTree, agent: AgentState): ValidationCheck[] {
  const checks: ValidationCheck[] = [];
  const user = tree.state.validation?.command;
  if (user) checks.push({ command: user, source: "user" });
  const planned = agent.plan?.validation?.command;
  if (planned && planned !== user) checks.push({ command: planned, source: "plan" });
  return checks;
}

/**
 * Runs every validation check (all of them, so each result is reported); returns undefined when
 * there is none, false when any fails. Each check emits `validation.result` naming its command.
 */
export async function validate(tree: AgentTree, agent: AgentState, workspace: Workspace): Promise<boolean | undefined> {
  const checks = validationChecks(tree, agent);
  if (checks.length === 0) return undefined;
  tree.pristine.delete(agent.id); // A check may write (build output).
  let passedAll = true;
  for (const check of checks) {
    const result = await workspace.exec(check.command, { timeoutMs: tree.state.validation?.timeoutMs ?? 600_000, signal: tree.signal });
    if (result.aborted) throw tree.signal.reason ?? new AbortedError();
    const passed = result.exitCode === 0 && !result.timedOut;
    passedAll &&= passed;
    tree.emit({
      type: "validation.result",
      agentId: agent.id,
      command: check.command,
      source: check.source,
      passed,
      exitCode: result.exitCode,
      output: result.output.length > VALIDATION_OUTPUT_LIMIT ? `…${result.output.slice(-VALIDATION_OUTPUT_LIMIT)}` : result.output,
    });
  }
  return passedAll;
}

/** The failing checks, for the message that asks the agent to fix them. */
export function describeChecks(tree: AgentTree, agent: AgentState): string {
  return validationChecks(tree, agent)
    .map((check) => `\`${check.command}\``)
    .join(" and ");
}

/**
 * Merges a finished child into its parent: a conflict or a failing validation is resolved by the
 * parent's model (policy `resolve`) or rolled back to the pre-merge commit. Safe to repeat after
 * a resume: an interrupted merge restarts from its recorded pre-merge commit.
 *
 * `cleanAt` is what the previous call returned: the commit a clean merge left the worktree at,
 * with nothing run in it since (no resolution, no validation command). While HEAD is still there,
 * the parent has nothing of its own to commit first, and no `status` is asked. Either way, when
 * git refuses the merge over a file written there since, that file is committed as the parent's
 * work and the merge tried again. Returns the commit when this merge leaves the worktree the same way.
 */
export async function mergeChild(tree: AgentTree, parent: AgentState, workspace: ForkableWorkspace, child: AgentState, cleanAt?: string): Promise<string | undefined> {
  const merge = parent.merges[child.id]!;
  const interrupted = merge.status === "in_progress" && merge.preMergeSha;
  if (interrupted) await workspace.resetTo(merge.preMergeSha!);
  const statusSkipped = !interrupted && cleanAt !== undefined && (await workspace.head()) === cleanAt;
  await startMerge(tree, parent, workspace, merge, child.branch, !statusSkipped);

  const message = commitMessage(`Merge ${child.branch}: ${child.title}`);
  let result: MergeResult;
  try {
    result = await workspace.merge(child.branch, message);
  } catch (error) {
    // Git refused before changing anything (a file in the parent's worktree the merge would
    // overwrite): something wrote there since the parent's work was last committed, a process the
    // parent started or a child without the sandbox. That is committed as the parent's work too,
    // and the merge is tried once more.
    if (!(error instanceof KeenError) || error.code !== "merge_failed") throw error;
    await startMerge(tree, parent, workspace, merge, child.branch, true);
    result = await workspace.merge(child.branch, message);
  }
  const conflicted = result.status === "conflict" ? result.files : [];
  let outcome: "merged" | "resolved" | "rolled_back" = "merged";
  let sha: string | null = result.status === "merged" ? result.sha : null;

  const resolve = async (problem: string): Promise<boolean> => {
    if (tree.state.onConflict !== "resolve") return false;
    try {
      sha = await resolveMerge(tree, parent, workspace, child, problem);
      return (await validate(tree, parent, workspace)) !== false;
    } catch (caught) {
      // A resolution that failed is rolled back; one that the run's stop cut short is not a
      // failure of the merge: an outage must leave the run interrupted, resumable, with this
      // merge redone, not go on without the child's work.
      if (stopsTheRun(tree, caught)) throw caught;
      return false;
    }
  };

  if (result.status === "conflict") {
    outcome = (await resolve(`Merging ${child.branch} into ${parent.branch} conflicted in: ${conflicted.join(", ")}.`)) ? "resolved" : "rolled_back";
  }
  const validated = result.status === "conflict" ? undefined : await validate(tree, parent, workspace);
  if (validated === false) {
    const problem = `After merging ${child.branch} into ${parent.branch}, the validation (${describeChecks(tree, parent)}) fails. Fix the code so it passes.`;
    outcome = (await resolve(problem)) ? "resolved" : "rolled_back";
  }
  if (outcome === "rolled_back") {
    await workspace.resetTo(merge.preMergeSha!);
    sha = null;
  }
  merge.status = outcome;
  tree.emit({ type: "git.merge", agentId: parent.id, branch: child.branch, into: parent.branch, result: outcome, conflictedFiles: conflicted, sha });
  return outcome === "merged" && validated === undefined && sha !== null ? sha : undefined;
}

/**
 * Merges children that finished together, in order, each with its own merge commit as
 * `mergeChild` makes it, but without a checkout each: the workspace's `mergeMany` makes the
 * commits from git's objects and moves the parent's worktree once. Only for merges that need
 * nothing of the worktree in between (no validation command; the caller checks). Stops before a
 * child whose merge would conflict or needs the attributes an earlier one brought, or when
 * something in the worktree is in the way; that child is left pending for `mergeChild`. Returns how many were merged (the first ones of `children`)
 * and the commit the worktree was left at, clean (`cleanAt` of `mergeChild`).
 */
export async function mergeChildren(
  tree: AgentTree,
  parent: AgentState,
  workspace: ForkableWorkspace & Required<Pick<ForkableWorkspace, "mergeMany">>,
  children: readonly AgentState[],
  cleanAt?: string,
): Promise<{ merged: number; cleanAt: string }> {
  const first = parent.merges[children[0]!.id]!;
  // Only the first is marked as in progress: a resume from here puts the worktree back at `start`
  // and merges it alone; the others are still pending.
  const start = await startMerge(tree, parent, workspace, first, children[0]!.branch, cleanAt === undefined || (await workspace.head()) !== cleanAt);
  let merged: Array<{ branch: string; sha: string }> = [];
  try {
    merged = await workspace.mergeMany(children.map((child) => ({ branch: child.branch, message: commitMessage(`Merge ${child.branch}: ${child.title}`) })));
  } catch (error) {
    // Something in the parent's worktree is in the way: `mergeChild` commits it and merges.
    if (!(error instanceof KeenError) || error.code !== "merge_failed") throw error;
  }
  if (merged.length === 0) {
    first.status = "pending";
    delete first.preMergeSha;
    await tree.snapshot();
    return { merged: 0, cleanAt: start };
  }
  let previous = start;
  for (const [i, { sha }] of merged.entries()) {
    const child = children[i]!;
    const record = parent.merges[child.id]!;
    record.preMergeSha = previous;
    record.status = "merged";
    previous = sha;
    tree.emit({ type: "git.merge", agentId: parent.id, branch: child.branch, into: parent.branch, result: "merged", conflictedFiles: [], sha });
  }
  await tree.snapshot();
  return { merged: merged.length, cleanAt: previous };
}

/**
 * The step before a merge into `parent`: its own uncommitted work committed first when
 * `commitOwnWork` (the parent's edits must not mix into the merge), then `record` marked in
 * progress from the commit the worktree is at, and saved. Returns that commit.
 */
async function startMerge(tree: AgentTree, parent: AgentState, workspace: ForkableWorkspace, record: MergeState, branch: string, commitOwnWork: boolean): Promise<string> {
  if (commitOwnWork) await commitAndReport(tree, parent, workspace, commitMessage(`keen: ${parent.id} work before merging ${branch}`));
  const head = await workspace.head();
  record.preMergeSha = head;
  record.status = "in_progress";
  await tree.snapshot();
  return head;
}

/** The parent model fixes a conflicted or failing merge with file tools, ending with complete_merge. */
async function resolveMerge(tree: AgentTree, parent: AgentState, workspace: ForkableWorkspace, child: AgentState, problem: string): Promise<string> {
  appendUserText(
    parent.messages,
    `${agentTag(parent.id, "SUMMON")}\n${problem}\nChild ${child.id} ("${child.title}") reported: ${child.summary ?? "(no summary)"}\nResolve it with the file tools (remove every conflict marker), then call complete_merge.`,
  );
  const tools = [...builtinTools(tree.toolOptions()), completeMergeTool];
  const { closingCall } = await converse(tree, parent, workspace, { tools, closingTool: "complete_merge", checkpoint: false });
  const note = (closingCall!.input as { summary: string }).summary;
  const conflicted = await workspace.conflictedFiles();
  if (conflicted.length > 0) return workspace.commitMerge(commitMessage(`Merge ${child.branch}: ${child.title}`, note));
  const { sha } = await commitAndReport(tree, parent, workspace, commitMessage(`Fix after merging ${child.branch}`, note));
  return sha ?? (await workspace.head());
}
