import type { AgentState } from "./task-state.js";

/** One system prompt for every agent and phase of a run, so its cache entry is shared. */
export const LIFECYCLE_SYSTEM_PROMPT = `You are keen, an autonomous software engineer working in a git repository, possibly as one agent in a tree of agents.

Every agent works in phases, and each phase offers only its own tools:
- EXPLORE: read the code that matters for your task, then call finish_explore.
- PLAN: decide whether the work splits into independent subtasks that other agents can do in parallel on their own branches (they are merged back into yours in order), then call submit_plan. Give no subtasks when the task is small or tightly coupled.
- COMPLETE: do the remaining work yourself with the file and command tools, check it, then call complete_task.
When a merge of a child's branch conflicts, you resolve it with the file tools and call complete_merge.

Paths are relative to your checkout's root. Make focused changes, keep the project's style, and run its checks when it has them. Do not commit: keen commits your work when you finish.`;

/** The first user message of an agent: its task, its place in the tree, and the repository overview. */
export function firstMessage(agent: AgentState, vision: string, analysis: string): string {
  const role =
    agent.parentId === null
      ? `You are the root agent (branch ${agent.branch}).`
      : `You are agent ${agent.id} at depth ${agent.depth}, on branch ${agent.branch}, working on one subtask of a larger task.\nThe overall goal: ${vision}`;
  return [
    role,
    `\nYour task:\n${agent.instructions}`,
    `\nRepository overview:\n${analysis}`,
    `\nPhase EXPLORE: look at what you need, then call finish_explore.`,
  ].join("\n");
}

export function phaseMessage(phase: "PLAN" | "COMPLETE", reason?: string): string {
  if (phase === "PLAN") return "Phase PLAN: decide how to split the work, then call submit_plan.";
  return `Phase COMPLETE${reason ? ` (${reason})` : ""}: do the work, check it, then call complete_task.`;
}

export function reminderMessage(closingTool: string): string {
  return `You answered without calling a tool. To finish this phase you must call ${closingTool}. Do so now.`;
}
