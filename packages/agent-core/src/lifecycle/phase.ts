import type { Workspace } from "../workspace/workspace.js";
import type { Step } from "./step.js";
import type { AgentState } from "./task-state.js";
import type { AgentTree } from "./tree.js";

/** One phase of an agent: how it is announced to the agent, and what it does. */
export interface PhaseDefinition {
  /** The instruction the agent reads when it enters the phase (after the tag line); `note` says why. */
  instruction(note?: string): string;
  /** Runs the phase for `agent` and says where it goes next. Must be safe to repeat after a resume. */
  run(tree: AgentTree, agent: AgentState, workspace: Workspace): Promise<Step>;
}
