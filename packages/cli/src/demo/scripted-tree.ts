import { reply, type ReplyPolicy, type ScriptedReply } from "@keen/agent-core/testing";

/**
 * One agent of a scripted lifecycle run. Its `instructions` must be unique in the tree: the
 * policy finds which agent sent a request by looking for them in its first message.
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
  const named = nameTasks(root);
  return async (request) => {
    const phase = closingToolOf(request);
    const first = messageText(request.messages?.[0]);
    // The most deeply nested match wins: a child's first message also quotes the overall goal.
    const match = named.filter(([name, task]) => name !== "root" && first.includes(task.instructions)).at(-1) ?? named[0]!;
    const [agent, task] = match;
    const turn = turnInPhase(request.messages ?? []);
    await options.onRequest?.({ agent, phase, turn });
    if (options.delayMs) await new Promise((resolve) => setTimeout(resolve, options.delayMs));
    return replyFor(task, phase, turn);
  };
}

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

/** A phase is told apart by the closing tool it offers. */
function closingToolOf(request: Record<string, any>): ClosingTool {
  const names = new Set<string>((request.tools ?? []).map((tool: { name: string }) => tool.name));
  for (const name of ["complete_merge", "finish_explore", "submit_plan", "complete_task"] as const) if (names.has(name)) return name;
  throw new Error("the request offers no phase-closing tool");
}

function messageText(message: { content?: unknown } | undefined): string {
  const content = message?.content;
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content
    .filter((block: { type?: string }) => block.type === "text")
    .map((block: { text: string }) => block.text)
    .join("\n");
}

/**
 * Assistant turns since the last user message that carries text: a new phase, a merge to
 * resolve or a reminder always arrives as text, while tool results alone continue a phase.
 */
function turnInPhase(messages: Array<{ role: string; content: unknown }>): number {
  let start = 0;
  messages.forEach((message, index) => {
    if (message.role === "user" && messageText(message).trim() !== "") start = index;
  });
  return messages.slice(start).filter((message) => message.role === "assistant").length;
}
