import { z } from "zod";
import { Phase, RunStatus } from "../events.js";
import { Message, Usage } from "../model/model.js";
import { FinishExploreInput, SubmitPlanInput } from "./phase-tools.js";

export const MergeState = z.object({
  status: z.enum(["pending", "in_progress", "merged", "resolved", "rolled_back", "skipped"]),
  /** The parent's HEAD before the merge started: where a rollback or a resumed merge resets to. */
  preMergeSha: z.string().optional(),
});
export type MergeState = z.infer<typeof MergeState>;

/** Everything needed to continue one agent in another process. */
export const AgentState = z.object({
  id: z.string(),
  parentId: z.string().nullable(),
  depth: z.number().int().nonnegative(),
  branch: z.string(),
  title: z.string(),
  instructions: z.string(),
  phase: z.union([Phase, z.literal("DONE")]),
  /** The agent's conversation, continued across phases. */
  messages: z.array(Message),
  explore: FinishExploreInput.optional(),
  plan: SubmitPlanInput.optional(),
  /** Child agent ids, in subtask order. */
  children: z.array(z.string()),
  merges: z.record(z.string(), MergeState),
  status: RunStatus.optional(),
  summary: z.string().optional(),
  /** This agent's own usage (children not included). */
  usage: Usage,
  commit: z.string().nullable().optional(),
});
export type AgentState = z.infer<typeof AgentState>;

export const TaskLimits = z.object({
  /** Deepest level of children (the root is depth 0). Default 2. */
  maxDepth: z.number().int().nonnegative(),
  /** Most children per agent. Default 4. */
  maxChildren: z.number().int().positive(),
  /** Most agents in the whole tree, root included. Default 10. */
  maxAgents: z.number().int().positive(),
  /** Most model turns per phase per agent. Default 30. */
  maxTurnsPerPhase: z.number().int().positive(),
  /** Most tokens (input + output + cache write + cache read) for the whole run. */
  tokenBudget: z.number().int().positive().optional(),
});
export type TaskLimits = z.infer<typeof TaskLimits>;

export const TaskSnapshot = z.object({
  version: z.literal(1),
  runId: z.string(),
  vision: z.string(),
  /** The seq the next event gets, so a resumed run continues the numbering. */
  nextSeq: z.number().int().nonnegative(),
  limits: TaskLimits,
  maxConcurrency: z.number().int().positive(),
  onConflict: z.enum(["resolve", "rollback"]),
  validation: z.object({ command: z.string(), timeoutMs: z.number().int().positive().optional() }).optional(),
  /** Tokens spent so far, against `limits.tokenBudget`. */
  tokensSpent: z.number().int().nonnegative(),
  agents: z.array(AgentState),
});
export type TaskSnapshot = z.infer<typeof TaskSnapshot>;
