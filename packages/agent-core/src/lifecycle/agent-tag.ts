import type { Phase } from "../events.js";

/**
 * The tag line keen writes into an agent's own conversation whenever it starts a phase (or a
 * merge resolution, or a retry after failed validation): `[keen agent=A-B phase=COMPLETE]`.
 * It is the one structured way for a scripted model to tell which agent and phase a request
 * belongs to, and it only ever sits in the agent's own messages — never in the system prompt,
 * the tools or the shared repository overview — so it cannot break a shared cache prefix.
 * `requestPosition()` from `@keen/agent-core/testing` parses it.
 */
export function agentTag(agentId: string, phase: Phase): string {
  return `[keen agent=${agentId} phase=${phase}]`;
}

/** Matches every tag line; group 1 is the agent id, group 2 the phase. */
export const AGENT_TAG_PATTERN = /^\[keen agent=([A-Za-z0-9_-]+) phase=([A-Z]+)\]$/gm;
