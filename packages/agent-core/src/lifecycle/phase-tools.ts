import * as z from "zod";
import { defineTool } from "../tools/define-tool.js";

export const FinishExploreInput = z.object({
  summary: z.string().min(1).describe("What you learned about the repository that matters for the task"),
  confidence: z.number().min(0).max(1).describe("How sure you are that you understand the task and the code, 0 to 1"),
  next_phase: z.enum(["PLAN", "COMPLETE"]).describe("PLAN to split the work into subtasks; COMPLETE to do it yourself now"),
});
export type FinishExploreInput = z.infer<typeof FinishExploreInput>;

export const Subtask = z.object({
  // A title names a branch's commits and shows in terminals: one line, no control characters.
  // eslint-disable-next-line no-control-regex
  title: z.string().trim().min(1).max(120).regex(/^[^\u0000-\u001f\u007f-\u009f]*$/, "must be one line without control characters"),
  instructions: z.string().min(1).describe("Everything a fresh engineer needs to do this subtask alone"),
  paths: z
    .array(z.string())
    .optional()
    .describe("Files or folders this subtask works in. Its worktree then holds only these (quicker to create) and it cannot read or write anything else; leave out when it needs the whole repository"),
});
export type Subtask = z.infer<typeof Subtask>;

export const SubmitPlanInput = z.object({
  approach: z.string().min(1),
  subtasks: z.array(Subtask).describe("Independent pieces of work that can run in parallel; empty to do the work yourself"),
  validation: z.object({ command: z.string().min(1) }).optional().describe("A command that must pass after each merge"),
});
export type SubmitPlanInput = z.infer<typeof SubmitPlanInput>;

export const CompleteTaskInput = z.object({
  summary: z.string().min(1).describe("What was done and how it was checked"),
  status: z.enum(["success", "failed"]),
});
export type CompleteTaskInput = z.infer<typeof CompleteTaskInput>;

export const CompleteMergeInput = z.object({
  summary: z.string().min(1).describe("How the conflicts were resolved"),
});
export type CompleteMergeInput = z.infer<typeof CompleteMergeInput>;

/** Closes EXPLORE. The orchestrator reads the input; the tool itself only acknowledges. */
export const finishExploreTool = defineTool({
  name: "finish_explore",
  description:
    "End the exploration phase. Call it once you understand the task and the relevant code. Choose PLAN when the task splits into independent parts worth doing in parallel, COMPLETE when you should do it yourself.",
  input: FinishExploreInput,
  readOnly: true,
  execute: (input) => `Exploration finished; moving to ${input.next_phase}.`,
});

export const submitPlanTool = defineTool({
  name: "submit_plan",
  description:
    "Submit the plan. Each subtask runs as a separate agent on its own git branch, in parallel, and is merged back in order, so subtasks should touch different files. Give no subtasks to do the work yourself.",
  input: SubmitPlanInput,
  readOnly: true,
  execute: (input) => `Plan accepted with ${input.subtasks.length} subtask(s).`,
});

export const completeTaskTool = defineTool({
  name: "complete_task",
  description:
    "Finish the task. Call it when the work is done and checked (status success) or when it cannot be done (status failed, with the reason in the summary).",
  input: CompleteTaskInput,
  readOnly: true,
  execute: (input) => `Task marked ${input.status}.`,
});

export const completeMergeTool = defineTool({
  name: "complete_merge",
  description: "Call when every conflicted file is resolved (no conflict markers left) and the result is correct.",
  input: CompleteMergeInput,
  readOnly: true,
  execute: () => "Merge resolution submitted.",
});
