import { ConfigError } from "../../errors.js";
import { readOnlyTools } from "../../tools/index.js";
import { isForkable } from "../../workspace/workspace.js";
import { converse } from "../converse.js";
import type { PhaseDefinition } from "../phase.js";
import { submitPlanTool, type SubmitPlanInput } from "../phase-tools.js";

/** PLAN: split the work into subtasks for child agents, or none. */
export const planPhase: PhaseDefinition = {
  instruction: () => "Phase PLAN: decide how to split the work, then call submit_plan.",
  async run(tree, agent, workspace) {
    const { closingCall } = await converse(tree, agent, workspace, { tools: [...readOnlyTools(tree.toolOptions()), submitPlanTool], closingTool: "submit_plan" });
    const plan = closingCall!.input as SubmitPlanInput;
    agent.plan = plan;
    if (plan.subtasks.length === 0) return { next: "COMPLETE", note: "the plan has no subtasks" };
    if (!isForkable(workspace)) throw new ConfigError("Subtasks need a workspace that can fork (such as LocalWorkspace)");
    return { next: "SUMMON" };
  },
};
