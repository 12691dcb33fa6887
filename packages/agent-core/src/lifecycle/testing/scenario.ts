import { reply, type ReplyPolicy, type ScriptedReply } from "../../testing/index.js";

/** The closing tools, which tell which phase a request belongs to. */
export type PhaseKey = "finish_explore" | "submit_plan" | "complete_task" | "complete_merge";

/** Per agent id, per phase: the replies in order. A missing entry ends the phase with a default. */
export type Scenario = Record<string, Partial<Record<PhaseKey, ScriptedReply[]>>>;

const PHASE_MARKERS = ["Phase EXPLORE", "Phase PLAN", "Phase COMPLETE", "complete_merge.", "call complete_task again"];

/** Which agent sent a request: read from its first user message. */
export function agentOf(request: Record<string, any>): string {
  const first = request.messages?.[0];
  const text = typeof first?.content === "string" ? first.content : (first?.content?.find((b: any) => b.type === "text")?.text ?? "");
  return /^You are agent (\S+) at depth/m.exec(text)?.[1] ?? "root";
}

function phaseOf(request: Record<string, any>): PhaseKey {
  const names = new Set<string>((request.tools ?? []).map((t: { name: string }) => t.name));
  for (const key of ["complete_merge", "finish_explore", "submit_plan", "complete_task"] as const) if (names.has(key)) return key;
  throw new Error("request offers no closing tool");
}

function userText(message: any): string {
  if (typeof message.content === "string") return message.content;
  return message.content.filter((b: any) => b.type === "text").map((b: any) => b.text).join("\n");
}

/** How many assistant turns this phase already had: counted from the last phase instruction. */
function turnInPhase(request: Record<string, any>): number {
  const messages: any[] = request.messages;
  let start = 0;
  messages.forEach((message, i) => {
    if (message.role === "user" && PHASE_MARKERS.some((marker) => userText(message).includes(marker))) start = i;
  });
  return messages.slice(start).filter((m) => m.role === "assistant").length;
}

const DEFAULTS: Record<PhaseKey, ScriptedReply> = {
  finish_explore: reply.toolUse("finish_explore", { summary: "Looked around.", confidence: 0.9, next_phase: "COMPLETE" }),
  submit_plan: reply.toolUse("submit_plan", { approach: "Do it directly.", subtasks: [] }),
  complete_task: reply.toolUse("complete_task", { summary: "Done.", status: "success" }),
  complete_merge: reply.toolUse("complete_merge", { summary: "Resolved." }),
};

/**
 * A deterministic policy for the offline server: the reply depends only on the request
 * (agent, phase, turn within the phase), so a resumed run gets the same answers.
 */
export function scenarioPolicy(scenario: Scenario, hooks: { onRequest?: (agent: string, phase: PhaseKey, turn: number) => void | Promise<void> } = {}): ReplyPolicy {
  return async (request) => {
    const agent = agentOf(request);
    const phase = phaseOf(request);
    const turn = turnInPhase(request);
    await hooks.onRequest?.(agent, phase, turn);
    const replies = scenario[agent]?.[phase] ?? [];
    return replies[turn] ?? DEFAULTS[phase];
  };
}

export const explore = (next: "PLAN" | "COMPLETE") => reply.toolUse("finish_explore", { summary: "Explored.", confidence: 0.8, next_phase: next });
export const plan = (subtasks: Array<{ title: string; instructions?: string }>, validation?: string) =>
  reply.toolUse("submit_plan", {
    approach: "Split the work.",
    subtasks: subtasks.map((s) => ({ title: s.title, instructions: s.instructions ?? `Do: ${s.title}` })),
    ...(validation ? { validation: { command: validation } } : {}),
  });
export const write = (path: string, content: string) => reply.toolUse("write_file", { path, content });
export const done = (summary = "Done.", status: "success" | "failed" = "success") => reply.toolUse("complete_task", { summary, status });
