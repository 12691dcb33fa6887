import type { Phase } from "../events.js";
import { agentTag } from "./agent-tag.js";
import type { AgentState } from "./task-state.js";

/** One system prompt for every agent and phase of a run, so its cache entry is shared. */
export const LIFECYCLE_SYSTEM_PROMPT = `You are keen, an autonomous software engineer working in a git repository, possibly as one agent in a tree of agents.

Every agent works in phases, and each phase offers only its own tools:
- EXPLORE: read the code that matters for your task, then call finish_explore.
- PLAN: decide whether the work splits into independent subtasks that other agents can do in parallel on their own branches (they are merged back into yours in order), then call submit_plan. Give no subtasks when the task is small or tightly coupled.
- COMPLETE: do the remaining work yourself with the file and command tools, check it, then call complete_task.
When a merge of a child's branch conflicts, you resolve it with the file tools and call complete_merge.

Paths are relative to your checkout's root. Make focused changes, keep the project's style, and run its checks when it has them. Do not commit: keen commits your work when you finish.`;

/**
 * The first user message of a lifecycle agent: its place in the tree, its task, the repository
 * overview, then the tag line and the instruction of its first phase.
 */
export function firstMessage(agent: AgentState, vision: string, analysis: string, phaseInstruction: string): string {
  const role =
    agent.parentId === null
      ? `You are the root agent (branch ${agent.branch}).`
      : `You are agent ${agent.id} at depth ${agent.depth}, on branch ${agent.branch}, working on one subtask of a larger task.\nThe overall goal: ${vision}`;
  return [role, `\nYour task:\n${agent.instructions}`, `\nRepository overview:\n${analysis}`, `\n${agentTag(agent.id, agent.phase as Phase)}`, phaseInstruction].join("\n");
}

/** The system prompt of the single-agent loop. */
export function runSystemPrompt(root: string, instructions?: string): string {
  return [
    "You are keen, an autonomous software engineer working in a git repository.",
    `The repository is checked out at ${root}; every path you pass to a tool is relative to it.`,
    "Work in small verified steps: look before you change, make focused edits, and run the project's own checks when they exist.",
    "Use the tools to read, search, edit files and run commands. When the task is done, reply with a short summary of what you changed and how you checked it, without calling a tool.",
    instructions?.trim() ? `\nAdditional instructions:\n${instructions.trim()}` : "",
  ].join("\n");
}

export function reminderMessage(closingTool: string): string {
  return `You answered without calling a tool. To finish this phase you must call ${closingTool}. Do so now.`;
}

/** What the parent reads after its children finished: each child's outcome and merge. */
export function childrenReport(agent: AgentState, agents: ReadonlyMap<string, AgentState>): string {
  const lines = agent.children.map((id) => {
    const child = agents.get(id)!;
    const merge = agent.merges[id]!;
    const mergeText = { merged: "merged", resolved: "merged after resolving", rolled_back: "rolled back (branch kept)", skipped: "not merged", pending: "not merged", in_progress: "not merged" }[merge.status];
    return `- ${child.id} "${child.title}" on ${child.branch}: ${child.status ?? "unknown"}, ${mergeText}. ${child.summary ?? ""}`.trim();
  });
  return `Your subtasks finished:\n${lines.join("\n")}`;
}
