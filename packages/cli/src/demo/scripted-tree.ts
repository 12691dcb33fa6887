import { reply, requestPosition, type ReplyPolicy, type ScriptedReply } from "@keen/agent-core/testing";

/**
 * One agent of a scripted lifecycle run. The policy tells agents apart by the tag keen writes
 * into each agent's messages (`requestPosition`), so instructions may repeat.
 */
export interface ScriptedTask {
  title: string;
  instructions: string;
  /** When present the agent plans these as subtasks; otherwise it completes the work itself. */
  subtasks?: ScriptedTask[];
  /** Turns of the COMPLETE phase before `complete_task` (tool calls such as `write_file`). */
  work?: ScriptedReply[];
  /** What `complete_task` reports. Default "Done." */
  summary?: string;
  /** Turns of a merge resolution before `complete_merge`, for agents whose children conflict. */
  resolve?: ScriptedReply[];
  /** What `complete_merge` reports. */
  resolveSummary?: string;
}

export type ClosingTool = "finish_explore" | "submit_plan" | "complete_task" | "complete_merge";

export interface ScriptedTreeOptions {
  /** Answer every request after this many milliseconds (to watch the live view, or to kill a run mid-way). */
  delayMs?: number;
  /** Called before each reply, e.g. to interrupt a run at a known point. */
  onRequest?: (request: { agent: string; phase: ClosingTool; turn: number }) => void | Promise<void>;
}

/**
 * A reply policy for the offline Messages API server that plays a whole agent tree: each
 * agent explores, plans its scripted subtasks (or none), does its scripted work and completes.
 * The reply depends only on the request (agent, phase, turn within the phase), never on what
 * was asked before, so a run resumed in another process gets the same answers.
 *
 * Agent names in callbacks are paths of subtask letters: `root`, `A`, `A-B`, …
 *
 * @example
 * const server = await startMessagesServer({
 *   policy: scriptedTreePolicy({
 *     title: "Docs", instructions: "Write the docs.",
 *     subtasks: [{ title: "Guide", instructions: "Write docs/guide.md.", work: [reply.toolUse("write_file", { path: "docs/guide.md", content: "# Guide\n" })] }],
 *   }),
 * });
 */
export function scriptedTreePolicy(root: ScriptedTask, options: ScriptedTreeOptions = {}): ReplyPolicy {
  const tasks = new Map(nameTasks(root));
  return async (request) => {
    const position = requestPosition(request);
    const phase = CLOSING_TOOL[position.phase];
    if (!phase) throw new Error(`the scripted tree has no replies for phase ${position.phase}`);
    const task = tasks.get(position.agent);
    if (!task) throw new Error(`the scripted tree has no agent ${position.agent}`);
    const { agent, turn } = position;
    await options.onRequest?.({ agent, phase, turn });
    if (options.delayMs) await new Promise((resolve) => setTimeout(resolve, options.delayMs));
    return replyFor(task, phase, turn);
  };
}

/** The step each tagged phase stands for. */
const CLOSING_TOOL: Record<string, ClosingTool> = { EXPLORE: "finish_explore", PLAN: "submit_plan", SUMMON: "complete_merge", COMPLETE: "complete_task" };

function replyFor(task: ScriptedTask, phase: ClosingTool, turn: number): ScriptedReply {
  const planned = (task.subtasks?.length ?? 0) > 0;
  switch (phase) {
    case "finish_explore":
      return reply.toolUse("finish_explore", { summary: `Read what "${task.title}" needs.`, confidence: 0.9, next_phase: planned ? "PLAN" : "COMPLETE" });
    case "submit_plan":
      return reply.toolUse("submit_plan", {
        approach: `Split "${task.title}" into ${task.subtasks?.length ?? 0} subtasks.`,
        subtasks: (task.subtasks ?? []).map((sub) => ({ title: sub.title, instructions: sub.instructions })),
      });
    case "complete_task":
      return task.work?.[turn] ?? reply.toolUse("complete_task", { summary: task.summary ?? "Done.", status: "success" });
    case "complete_merge":
      return task.resolve?.[turn] ?? reply.toolUse("complete_merge", { summary: task.resolveSummary ?? "Resolved the conflict." });
  }
}

/** Pairs of [agent name, task] in depth-first order, the root first. */
function nameTasks(root: ScriptedTask): Array<[string, ScriptedTask]> {
  const out: Array<[string, ScriptedTask]> = [];
  const visit = (task: ScriptedTask, name: string) => {
    out.push([name, task]);
    task.subtasks?.forEach((sub, index) => visit(sub, name === "root" ? letter(index) : `${name}-${letter(index)}`));
  };
  visit(root, "root");
  return out;
}

function letter(index: number): string {
  return String.fromCharCode(65 + index);
}
