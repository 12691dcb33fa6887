import { builtinTools } from "../../tools/index.js";
import { converse } from "../converse.js";
import type { PhaseDefinition } from "../phase.js";

/**
 * RUN: the single-agent loop — the agent works with its tools until it answers without calling
 * one; that answer is its summary.
 */
export const runPhase: PhaseDefinition = {
  instruction: () => "",
  async run(tree, agent, workspace) {
    const tools = tree.settings.tools ?? builtinTools(tree.toolOptions());
    const { finalText } = await converse(tree, agent, workspace, { tools });
    return { next: "DONE", status: "success", summary: finalText };
  },
};
