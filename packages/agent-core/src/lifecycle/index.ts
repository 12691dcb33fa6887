export { startTask, resumeTask, type TaskOptions, type ResumeOptions, type TaskResult, type TaskRun } from "./start-task.js";
export { TaskSnapshot, TaskLimits, AgentState, MergeState, readSnapshot, SNAPSHOT_VERSION, READABLE_SNAPSHOT_VERSIONS } from "./task-state.js";
export { Step } from "./step.js";
export { encodeSnapshot, serializeSnapshot } from "./snapshots.js";
export { TRANSITIONS } from "./machine.js";
export { agentTag } from "./agent-tag.js";
export { commitMessage } from "./commits.js";
export { costUsd, modelPrice, MODEL_PRICES, type ModelPrice } from "./pricing.js";
export { runBranchName } from "./engine.js";
export { childBranch, subtaskLabel, agentIdForBranch, SUMMON_PREFIX, AGENTS_SUFFIX } from "./branch-names.js";
export {
  finishExploreTool,
  submitPlanTool,
  completeTaskTool,
  completeMergeTool,
  FinishExploreInput,
  SubmitPlanInput,
  CompleteTaskInput,
  CompleteMergeInput,
  Subtask,
} from "./phase-tools.js";
export { analyzeProject, formatAnalysis, type ProjectAnalysis } from "./project-analysis.js";
export { LIFECYCLE_SYSTEM_PROMPT } from "./prompts.js";
