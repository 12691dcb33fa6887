import { isForkable, type CommitResult, type Workspace } from "../workspace/workspace.js";
import type { AgentState } from "./task-state.js";
import type { AgentTree } from "./tree.js";

/**
 * Characters a commit message must not carry: NUL makes git refuse the commit, and other
 * control characters (escape sequences, carriage returns) would reach terminals through
 * `git log`. Tabs and newlines are kept.
 */
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029]/g;

/** Text with every unsafe control character replaced by a space. */
export function safeText(text: string): string {
  return text.replace(UNSAFE, " ");
}

/**
 * A commit message built from untrusted parts (titles and summaries written by a model): the
 * subject is one clean line, the body paragraphs are cleaned, and there are no runs of blank
 * lines. Git always accepts the result, so a child's work is never lost to its title.
 *
 * @example
 * commitMessage("Add\u0000 login", "Done.", "Agent: A (keen)"); // "Add  login\n\nDone.\n\nAgent: A (keen)"
 */
export function commitMessage(subject: string, ...paragraphs: Array<string | undefined>): string {
  const line = safeText(subject).replace(/\s+/g, " ").trim() || "keen: work";
  const body = paragraphs
    .map((paragraph) => safeText(paragraph ?? "").trim())
    .filter(Boolean)
    .join("\n\n");
  return `${line}${body ? `\n\n${body}` : ""}`.replace(/\n{3,}/g, "\n\n");
}

/**
 * Keeps whatever the agent left in its worktree in one commit on its branch (also after a
 * failure or an abort), and emits `git.commit` only for a commit that was made.
 */
export async function commitWork(tree: AgentTree, agent: AgentState, workspace: Workspace, statusOverride?: string): Promise<void> {
  if (tree.settings.commit === false) return;
  try {
    if (isForkable(workspace)) await workspace.abortMerge();
    const statusText = statusOverride ?? agent.status;
    const status = statusText && statusText !== "success" ? `Status: ${statusText}` : undefined;
    const message = commitMessage(agent.title, agent.summary, status, `Agent: ${agent.id} (keen)`);
    const { sha } = await commitAndReport(tree, agent, workspace, message);
    if (sha) {
      agent.commit = sha;
      tree.emit({ type: "git.commit", agentId: agent.id, branch: agent.branch, sha, message: message.split("\n")[0]! });
    } else {
      agent.commit = agent.commit ?? null;
    }
  } catch (caught) {
    agent.status = "error";
    agent.summary = `Could not commit the work: ${caught instanceof Error ? caught.message : String(caught)}`;
    agent.error = { code: "commit_failed", message: agent.summary };
  }
}

/** Commits in `agent`'s workspace and emits `git.skipped` for every file the commit left out. */
export async function commitAndReport(tree: AgentTree, agent: AgentState, workspace: Workspace, message: string): Promise<CommitResult> {
  const result = await workspace.commit(message, tree.authorOption());
  if (result.skipped.length > 0) {
    tree.emit({ type: "git.skipped", agentId: agent.id, branch: agent.branch, files: result.skipped.map((file) => ({ ...file })) });
  }
  return result;
}
