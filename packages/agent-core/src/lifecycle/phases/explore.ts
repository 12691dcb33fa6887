import { readOnlyTools } from "../../tools/index.js";
import { converse } from "../converse.js";
import type { PhaseDefinition } from "../phase.js";
import { finishExploreTool, type FinishExploreInput } from "../phase-tools.js";

/** EXPLORE: read what matters, then choose to plan subtasks or do the work. */
export const explorePhase: PhaseDefinition = {
  instruction: () => "Phase EXPLORE: look at what you need, then call finish_explore.",
  async run(tree, agent, workspace) {
    const { closingCall } = await converse(tree, agent, workspace, { tools: [...readOnlyTools(tree.toolOptions()), finishExploreTool], closingTool: "finish_explore" });
    const input = closingCall!.input as FinishExploreInput;
    agent.explore = input;
    const { maxDepth } = tree.state.limits;
    if (input.next_phase !== "PLAN") return { next: "COMPLETE" };
    if (agent.depth < maxDepth) return { next: "PLAN" };
    tree.emit({ type: "limit.reached", agentId: agent.id, limit: "maxDepth", value: maxDepth, detail: `Agent ${agent.id} at depth ${agent.depth} may not plan subtasks` });
    return { next: "COMPLETE", note: `the depth limit of ${maxDepth} is reached, so you do the work yourself` };
  },
};
