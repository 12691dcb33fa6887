import { AbortedError, ConfigError } from "../../errors.js";
import { isForkable, type ForkableWorkspace, type ForkOptions } from "../../workspace/workspace.js";
import { childBranch, subtaskLabel } from "../branch-names.js";
import { mergeChild, mergeChildren, validationChecks } from "../merge.js";
import type { PhaseDefinition } from "../phase.js";
import { childrenReport } from "../prompts.js";
import type { AgentState } from "../task-state.js";
import type { AgentTree } from "../tree.js";

/**
 * SUMMON: create the planned children (within the limits), fork a branch and worktree for each,
 * run them at most `maxConcurrency` at a time, merge the successful ones in child order (each
 * as soon as it and the ones before it are done), and report.
 * Every child worktree is disposed however the phase ends. Safe to repeat after a resume.
 */
export const summonPhase: PhaseDefinition = {
  instruction: (note) => `Phase SUMMON${note ? ` (${note})` : ""}: your subtasks are running.`,
  async run(tree, agent, workspace) {
    if (!isForkable(workspace)) throw new ConfigError("Subtasks need a workspace that can fork (such as LocalWorkspace)");
    // Children made now get new branches; children read from a snapshot may already have theirs
    // (a crash can come between the fork and their first turn), so they are re-attached.
    const created = new Set(agent.children.length === 0 ? await createChildren(tree, agent) : []);
    const children = agent.children.map((id) => tree.agents.get(id)!);
    const forked: ForkableWorkspace[] = [];
    try {
      // Fork every child first, all at once: fork holds the repository lock only to create the
      // branch and register the worktree, so the checkouts run in parallel. Events keep child order.
      const toFork = children.filter((child) => !(child.phase === "DONE" && tree.workspaces.has(child.id)));
      const fresh = new Set(toFork.filter((child) => created.has(child.id)).map((child) => child.id));
      for (const child of toFork) if (fresh.has(child.id)) tree.emitSpawn(child);
      // A new child's branch is created fresh from the parent's head (a sparse worktree when its
      // subtask names its paths); a resumed one is re-attached, with the same paths, so a worktree
      // made again is as sparse as the first.
      const forks = await Promise.allSettled(
        toFork.map((child) => workspace.fork(child.branch, fresh.has(child.id) ? forkOptions(agent, child) : { reattach: true, ...forkOptions(agent, child) })),
      );
      for (const [i, outcome] of forks.entries()) {
        if (outcome.status === "fulfilled") {
          forked.push(outcome.value);
          tree.workspaces.set(toFork[i]!.id, outcome.value);
          if (fresh.has(toFork[i]!.id)) tree.pristine.set(toFork[i]!.id, await outcome.value.head());
        }
      }
      const failed = forks.find((outcome): outcome is PromiseRejectedResult => outcome.status === "rejected");
      if (failed) throw failed.reason;
      for (const child of toFork) {
        if (fresh.has(child.id)) tree.emit({ type: "git.branch", agentId: child.id, branch: child.branch, from: agent.branch, worktree: tree.workspaces.get(child.id)!.root });
      }

      // Merge in child order, each as soon as it and every child before it have finished, while
      // later children still run.
      const finished = new Map<string, Promise<void>>();
      const settled = new Set<string>();
      const pool = runPool(
        children.filter((child) => child.phase !== "DONE"),
        tree.state.maxConcurrency,
        (child) => tree.drive(child, tree.workspaces.get(child.id)!),
        (child, done) => {
          finished.set(child.id, done);
          void done.then(() => settled.add(child.id));
        },
      );
      const hasFinished = (child: AgentState) => !finished.has(child.id) || settled.has(child.id);
      // Without a validation command, merges need nothing of the worktree in between.
      const batchable = workspace.mergeMany !== undefined && validationChecks(tree, agent).length === 0;
      try {
        // The commit the last clean merge left the parent's worktree at (see mergeChild).
        let cleanAt: string | undefined;
        for (let i = 0; i < children.length; i++) {
          const child = children[i]!;
          await finished.get(child.id);
          if (tree.signal.aborted) throw tree.signal.reason ?? new AbortedError();
          const merge = agent.merges[child.id]!;
          if (merge.status !== "pending" && merge.status !== "in_progress") continue;
          if (child.status !== "success") {
            merge.status = "skipped";
            continue;
          }
          // This child and the successful ones right after it that have finished too are merged
          // together, without a checkout each (see mergeChildren).
          const together = [child];
          if (batchable && merge.status === "pending") {
            for (const next of children.slice(i + 1)) {
              if (!hasFinished(next) || next.status !== "success" || agent.merges[next.id]!.status !== "pending") break;
              together.push(next);
            }
          }
          if (together.length > 1) {
            const done = await mergeChildren(tree, agent, workspace as Parameters<typeof mergeChildren>[2], together, cleanAt);
            cleanAt = done.cleanAt;
            i += done.merged;
            if (done.merged === together.length) {
              i--;
              continue;
            }
            // The next one would conflict, or something in the worktree was in the way: it is merged there.
          }
          cleanAt = await mergeChild(tree, agent, workspace, children[i]!, cleanAt);
          await tree.snapshot();
        }
      } finally {
        // No worktree is disposed while a child still works in it.
        await pool;
      }
      if (tree.signal.aborted) throw tree.signal.reason ?? new AbortedError();
    } finally {
      // Also after an abort or a budget stop: no worktree is left locked behind.
      const toDispose = new Set<ForkableWorkspace>(forked);
      for (const child of children) {
        const childWorkspace = tree.workspaces.get(child.id);
        if (childWorkspace && isForkable(childWorkspace)) toDispose.add(childWorkspace);
      }
      for (const childWorkspace of toDispose) await childWorkspace.dispose().catch(() => {});
    }
    return { next: "COMPLETE", report: childrenReport(agent, tree.agents) };
  },
};

/** Turns the plan's subtasks into child agents, cut to the tree's limits (with events); returns their ids. */
async function createChildren(tree: AgentTree, agent: AgentState): Promise<string[]> {
  const { limits } = tree.state;
  let subtasks = agent.plan!.subtasks;
  if (subtasks.length > limits.maxChildren) {
    tree.emit({ type: "limit.reached", agentId: agent.id, limit: "maxChildren", value: limits.maxChildren, detail: `${subtasks.length} subtasks planned; only the first ${limits.maxChildren} run` });
    subtasks = subtasks.slice(0, limits.maxChildren);
  }
  const room = limits.maxAgents - tree.agents.size;
  if (subtasks.length > room) {
    tree.emit({ type: "limit.reached", agentId: agent.id, limit: "maxAgents", value: limits.maxAgents, detail: `The tree may hold ${limits.maxAgents} agents; ${Math.max(0, room)} more can start` });
    subtasks = subtasks.slice(0, Math.max(0, room));
  }
  for (const [index, subtask] of subtasks.entries()) {
    const child = tree.createAgent({
      id: agent.parentId === null ? subtaskLabel(index) : `${agent.id}-${subtaskLabel(index)}`,
      parentId: agent.id,
      depth: agent.depth + 1,
      branch: childBranch(agent.branch, index, agent.parentId === null, tree.state.runBranch !== undefined),
      title: subtask.title,
      instructions: subtask.instructions + (subtask.paths?.length ? `\n\nYour worktree holds only these paths: ${subtask.paths.join(", ")}` : ""),
      phase: "EXPLORE",
    });
    agent.children.push(child.id);
    agent.merges[child.id] = { status: "pending" };
  }
  await tree.snapshot();
  return [...agent.children];
}

/** `fork` options of a child (new or re-attached): the paths its subtask names, in the order children were created. */
export function forkOptions(parent: AgentState, child: AgentState): ForkOptions {
  const paths = parent.plan?.subtasks[parent.children.indexOf(child.id)]?.paths;
  return paths && paths.length > 0 ? { paths } : {};
}

/**
 * Runs `task` over `items`, at most `limit` at a time; never rejects (tasks handle their own
 * failures). `track` receives, up front and for every item, a promise that settles when its task has.
 */
async function runPool<T>(items: T[], limit: number, task: (item: T) => Promise<void>, track: (item: T, done: Promise<void>) => void = () => {}): Promise<void> {
  const settle = new Map<T, () => void>();
  for (const item of items) track(item, new Promise<void>((resolve) => settle.set(item, resolve)));
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++]!;
      await task(item).catch(() => {});
      settle.get(item)!();
    }
  });
  await Promise.all(workers);
}
