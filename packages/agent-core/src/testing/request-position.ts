import { AGENT_TAG_PATTERN } from "../lifecycle/agent-tag.js";

/** Which agent sent a request, in which phase, and how many of its turns that phase already had. */
export interface RequestPosition {
  /** Agent id: `root`, `A`, `A-B`, … */
  agent: string;
  /** `EXPLORE`, `PLAN`, `SUMMON` (resolving a merge), `COMPLETE` or `RUN` (the single-agent loop). */
  phase: string;
  /**
   * Assistant turns since the agent was last told where it is (entering the phase, a merge to
   * resolve, a retry after failed validation): 0 for the first request of a step.
   */
  turn: number;
}

/**
 * Reads the tag line keen writes into each agent's own messages (`[keen agent=A phase=PLAN]`)
 * to tell which agent and phase a Messages API request belongs to — the one documented way for
 * a scripted model to follow a run, independent of prompt wording and of which tools a phase
 * offers. Throws when the request carries no tag (it did not come from keen's engine).
 *
 * @example
 * const server = await startMessagesServer({
 *   policy: (request) => {
 *     const { agent, phase, turn } = requestPosition(request);
 *     return script[agent]?.[phase]?.[turn] ?? reply.text("done");
 *   },
 * });
 */
export function requestPosition(request: { messages?: unknown }): RequestPosition {
  const messages = Array.isArray(request.messages) ? (request.messages as Array<{ role?: string; content?: unknown }>) : [];
  for (let index = messages.length - 1; index >= 0; index--) {
    const message = messages[index]!;
    if (message.role !== "user") continue;
    const tags = [...textOf(message.content).matchAll(AGENT_TAG_PATTERN)];
    const last = tags.at(-1);
    if (!last) continue;
    const turn = messages.slice(index).filter((m) => m.role === "assistant").length;
    return { agent: last[1]!, phase: last[2]!, turn };
  }
  throw new Error("The request carries no keen agent tag; it did not come from a keen run");
}

function textOf(content: unknown): string {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content
    .filter((block): block is { type: "text"; text: string } => block?.type === "text" && typeof block.text === "string")
    .map((block) => block.text)
    .join("\n");
}
