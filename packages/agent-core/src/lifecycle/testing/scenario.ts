import { reply, requestPosition, type ReplyPolicy, type ScriptedReply } from "../../testing/index.js";
import { subtaskLabel } from "../branch-names.js";

/** The closing tools, one per kind of step a scripted agent answers. */
export type PhaseKey = "finish_explore" | "submit_plan" | "complete_task" | "complete_merge";

/** Per agent id, per phase: the replies in order. A missing entry ends the phase with a default. */
export type Scenario = Record<string, Partial<Record<PhaseKey, ScriptedReply[]>>>;

const KEY_OF_PHASE: Record<string, PhaseKey> = { EXPLORE: "finish_explore", PLAN: "submit_plan", SUMMON: "complete_merge", COMPLETE: "complete_task" };

/** Which agent sent a request, read from keen's agent tag. */
export function agentOf(request: Record<string, any>): string {
  return requestPosition(request).agent;
}

/** The step a request belongs to (by its closing tool), read from keen's agent tag. */
export function phaseOf(request: Record<string, any>): PhaseKey {
  const { phase } = requestPosition(request);
  const key = KEY_OF_PHASE[phase];
  if (!key) throw new Error(`no scenario step for phase ${phase}`);
  return key;
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
    const { agent, turn } = requestPosition(request);
    const phase = phaseOf(request);
    await hooks.onRequest?.(agent, phase, turn);
    const replies = scenario[agent]?.[phase] ?? [];
    return replies[turn] ?? DEFAULTS[phase];
  };
}

export const explore = (next: "PLAN" | "COMPLETE") => reply.toolUse("finish_explore", { summary: "Explored.", confidence: 0.8, next_phase: next });
export const plan = (subtasks: Array<{ title: string; instructions?: string; paths?: string[] }>, validation?: string) =>
  reply.toolUse("submit_plan", {
    approach: "Split the work.",
    subtasks: subtasks.map((s) => ({ title: s.title, instructions: s.instructions ?? `Do: ${s.title}`, ...(s.paths ? { paths: s.paths } : {}) })),
    ...(validation ? { validation: { command: validation } } : {}),
  });
export const write = (path: string, content: string) => reply.toolUse("write_file", { path, content });
export const done = (summary = "Done.", status: "success" | "failed" = "success") => reply.toolUse("complete_task", { summary, status });

/**
 * A root that explores, plans `count` children and completes once they are merged; child `A`,
 * `B`, … each writes `src/part-<label>.ts` (`export const part<label> = true;`) and finishes.
 */
export function fanOutScenario(count: number): Scenario {
  const scenario: Scenario = {
    root: {
      finish_explore: [explore("PLAN")],
      submit_plan: [plan(Array.from({ length: count }, (_, i) => ({ title: `Part ${subtaskLabel(i)}` })))],
      complete_task: [done("All merged.")],
    },
  };
  for (let i = 0; i < count; i++) {
    const label = subtaskLabel(i);
    scenario[label] = { complete_task: [write(`src/part-${label}.ts`, `export const part${label} = true;\n`), done(`Part ${label} written.`)] };
  }
  return scenario;
}
