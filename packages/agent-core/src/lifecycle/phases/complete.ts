import { builtinTools } from "../../tools/index.js";
import { agentTag } from "../agent-tag.js";
import { appendUserText, converse } from "../converse.js";
import { describeChecks, validate } from "../merge.js";
import type { PhaseDefinition } from "../phase.js";
import { completeTaskTool, type CompleteTaskInput } from "../phase-tools.js";

/** COMPLETE: do the remaining work; a success must pass validation (one chance to fix it). */
export const completePhase: PhaseDefinition = {
  instruction: (note) => `Phase COMPLETE${note ? ` (${note})` : ""}: do the work, check it, then call complete_task.`,
  async run(tree, agent, workspace) {
    const tools = [...builtinTools(tree.toolOptions()), ...(tree.settings.tools ?? []), completeTaskTool];
    let { closingCall } = await converse(tree, agent, workspace, { tools, closingTool: "complete_task" });
    let input = closingCall!.input as CompleteTaskInput;
    if (input.status === "success" && (await validate(tree, agent, workspace)) === false) {
      appendUserText(agent.messages, `${agentTag(agent.id, "COMPLETE")}\nThe validation (${describeChecks(tree, agent)}) fails. Fix it, then call complete_task again.`);
      ({ closingCall } = await converse(tree, agent, workspace, { tools, closingTool: "complete_task" }));
      input = closingCall!.input as CompleteTaskInput;
      if (input.status === "success" && (await validate(tree, agent, workspace)) === false) {
        input = { status: "failed", summary: `${input.summary}\n(validation still fails)` };
      }
    }
    return { next: "DONE", status: input.status, summary: input.summary };
  },
};
