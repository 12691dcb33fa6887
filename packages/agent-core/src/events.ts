import * as z from "zod";
import { Usage } from "./model/model.js";

/**
 * The version of the event protocol: the envelope and every event type below. It changes when
 * a field is removed or changes meaning (adding optional fields or new event types does not).
 */
export const PROTOCOL_VERSION = 1;

/**
 * Fields every event carries. `seq` is strictly increasing per run, starting at 0, with no
 * gaps, and is never reused — also across a resume when the run has a durable `EventLog`.
 */
const envelope = {
  /** Always written; an event stored before the field existed reads as version 1. */
  protocol: z.literal(PROTOCOL_VERSION).default(PROTOCOL_VERSION),
  runId: z.string(),
  agentId: z.string(),
  seq: z.number().int().nonnegative(),
  /** ISO-8601 timestamp. */
  at: z.string(),
};

export const Phase = z.enum(["EXPLORE", "PLAN", "SUMMON", "COMPLETE", "RUN"]);
export type Phase = z.infer<typeof Phase>;

/**
 * How a run or an agent ended. `interrupted`: the model could not be reached after every retry
 * (overload, network); the run stopped with its state saved and can be resumed.
 */
export const RunStatus = z.enum(["success", "failed", "aborted", "error", "interrupted"]);
export type RunStatus = z.infer<typeof RunStatus>;

export const RunStartedEvent = z.object({
  ...envelope,
  type: z.literal("run.started"),
  vision: z.string(),
  model: z.string(),
  repo: z.string(),
  branch: z.string(),
});
export type RunStartedEvent = z.infer<typeof RunStartedEvent>;

export const RunCompletedEvent = z.object({
  ...envelope,
  type: z.literal("run.completed"),
  status: RunStatus,
  summary: z.string(),
  usage: Usage,
  /** What the run's usage cost in US dollars (keen's price table), when the model's price is known. */
  costUsd: z.number().nonnegative().optional(),
  /** The branch holding the run's result (the run branch, or the checkout's branch). */
  branch: z.string().optional(),
  /** The commit at the head of `branch` when the run ended. */
  head: z.string().optional(),
  /** Where the host keeps the run's snapshot (the `snapshotLocation` it passed), to resume or inspect it. */
  snapshot: z.string().optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
  durationMs: z.number().nonnegative(),
});
export type RunCompletedEvent = z.infer<typeof RunCompletedEvent>;

export const AgentSpawnedEvent = z.object({
  ...envelope,
  type: z.literal("agent.spawned"),
  parentId: z.string().nullable(),
  branch: z.string(),
  depth: z.number().int().nonnegative(),
  title: z.string(),
});
export type AgentSpawnedEvent = z.infer<typeof AgentSpawnedEvent>;

export const AgentPhaseEvent = z.object({
  ...envelope,
  type: z.literal("agent.phase"),
  phase: Phase,
  previous: Phase.nullable(),
});
export type AgentPhaseEvent = z.infer<typeof AgentPhaseEvent>;

export const AgentCompletedEvent = z.object({
  ...envelope,
  type: z.literal("agent.completed"),
  status: RunStatus,
  summary: z.string(),
  /** Usage of this agent and all its descendants. */
  usage: Usage,
});
export type AgentCompletedEvent = z.infer<typeof AgentCompletedEvent>;

export const ModelTextEvent = z.object({
  ...envelope,
  type: z.literal("model.text"),
  /** The text the model wrote in one response (after streaming finished). */
  text: z.string(),
});
export type ModelTextEvent = z.infer<typeof ModelTextEvent>;

export const ModelUsageEvent = z.object({
  ...envelope,
  type: z.literal("model.usage"),
  model: z.string(),
  requestId: z.string(),
  /** Usage of this one request. */
  usage: Usage,
  /** Running total for this agent. */
  agentTotal: Usage,
  stopReason: z.string(),
});
export type ModelUsageEvent = z.infer<typeof ModelUsageEvent>;

export const ModelRetryEvent = z.object({
  ...envelope,
  type: z.literal("model.retry"),
  attempt: z.number().int().positive(),
  delayMs: z.number().nonnegative(),
  reason: z.string(),
  status: z.number().int().optional(),
});
export type ModelRetryEvent = z.infer<typeof ModelRetryEvent>;

export const ToolStartedEvent = z.object({
  ...envelope,
  type: z.literal("tool.started"),
  toolUseId: z.string(),
  name: z.string(),
  input: z.unknown(),
});
export type ToolStartedEvent = z.infer<typeof ToolStartedEvent>;

export const ToolCompletedEvent = z.object({
  ...envelope,
  type: z.literal("tool.completed"),
  toolUseId: z.string(),
  name: z.string(),
  isError: z.boolean(),
  /** The result the model sees, cut to a few KiB for the event. */
  output: z.string(),
  durationMs: z.number().nonnegative(),
});
export type ToolCompletedEvent = z.infer<typeof ToolCompletedEvent>;

export const GitCommitEvent = z.object({
  ...envelope,
  type: z.literal("git.commit"),
  branch: z.string(),
  sha: z.string(),
  message: z.string(),
});
export type GitCommitEvent = z.infer<typeof GitCommitEvent>;

export const GitBranchEvent = z.object({
  ...envelope,
  type: z.literal("git.branch"),
  branch: z.string(),
  from: z.string(),
  worktree: z.string(),
});
export type GitBranchEvent = z.infer<typeof GitBranchEvent>;

/** Files keen left out of a commit (or of a run's first commit with `includeUncommitted`), and why. */
export const GitSkippedEvent = z.object({
  ...envelope,
  type: z.literal("git.skipped"),
  branch: z.string(),
  files: z.array(
    z.object({
      path: z.string(),
      reason: z.enum(["credential", "too_large", "temp_file", "not_regular", "invalid_name"]),
      detail: z.string().optional(),
    }),
  ),
});
export type GitSkippedEvent = z.infer<typeof GitSkippedEvent>;

export const GitMergeEvent = z.object({
  ...envelope,
  type: z.literal("git.merge"),
  branch: z.string(),
  into: z.string(),
  result: z.enum(["merged", "resolved", "rolled_back"]),
  conflictedFiles: z.array(z.string()),
  sha: z.string().nullable(),
});
export type GitMergeEvent = z.infer<typeof GitMergeEvent>;

export const ValidationResultEvent = z.object({
  ...envelope,
  type: z.literal("validation.result"),
  command: z.string(),
  /** Who asked for the check: the user's validation (always run) or the agent's plan (in addition). */
  source: z.enum(["user", "plan"]).optional(),
  passed: z.boolean(),
  exitCode: z.number().int().nullable(),
  output: z.string(),
});
export type ValidationResultEvent = z.infer<typeof ValidationResultEvent>;

export const LimitReachedEvent = z.object({
  ...envelope,
  type: z.literal("limit.reached"),
  limit: z.enum(["maxDepth", "maxChildren", "maxAgents", "maxTurns", "tokenBudget", "costBudget"]),
  value: z.number(),
  detail: z.string(),
});
export type LimitReachedEvent = z.infer<typeof LimitReachedEvent>;

export const ContextPrunedEvent = z.object({
  ...envelope,
  type: z.literal("context.pruned"),
  clearedToolResults: z.number().int().nonnegative(),
  compactedMessages: z.number().int().nonnegative(),
  tokensBefore: z.number().int().nonnegative(),
  tokensAfter: z.number().int().nonnegative(),
});
export type ContextPrunedEvent = z.infer<typeof ContextPrunedEvent>;

/**
 * On resume, for an agent whose last turn was cut short after its checkpoint: the worktree was
 * put back to the state the turn started from (`restored`, listing the files that changed), or
 * left as it was (`skipped`, with the reason: e.g. the agent works in a checkout keen did not
 * create, whose files keen never puts back).
 */
export const TurnRestoredEvent = z.object({
  ...envelope,
  type: z.literal("turn.restored"),
  branch: z.string(),
  /** The agent's turn (counted from 0) that is repeated. */
  turn: z.number().int().nonnegative(),
  result: z.enum(["restored", "skipped"]),
  files: z.array(z.string()),
  detail: z.string().optional(),
});
export type TurnRestoredEvent = z.infer<typeof TurnRestoredEvent>;

/** Every event keen emits, discriminated by `type`. */
export const KeenEvent = z.discriminatedUnion("type", [
  RunStartedEvent,
  RunCompletedEvent,
  AgentSpawnedEvent,
  AgentPhaseEvent,
  AgentCompletedEvent,
  ModelTextEvent,
  ModelUsageEvent,
  ModelRetryEvent,
  ToolStartedEvent,
  ToolCompletedEvent,
  GitCommitEvent,
  GitBranchEvent,
  GitSkippedEvent,
  GitMergeEvent,
  ValidationResultEvent,
  LimitReachedEvent,
  ContextPrunedEvent,
  TurnRestoredEvent,
]);
export type KeenEvent = z.infer<typeof KeenEvent>;

export type KeenEventType = KeenEvent["type"];
export type KeenEventOf<T extends KeenEventType> = Extract<KeenEvent, { type: T }>;

/** An event before the run stamps it with `protocol`, `runId`, `seq` and `at`. */
export type KeenEventInput = KeenEvent extends infer E
  ? E extends KeenEvent
    ? Omit<E, "protocol" | "runId" | "seq" | "at">
    : never
  : never;

/** Parses and validates an event, e.g. one read back from NDJSON or a database. */
export function parseEvent(value: unknown): KeenEvent {
  return KeenEvent.parse(value);
}

/**
 * The JSON Schema (draft 2020-12) of `KeenEvent`, generated from the zod schemas, for consumers
 * that do not use TypeScript (a server storing events, a dashboard in another language).
 *
 * @example
 * await writeFile("keen-event.schema.json", JSON.stringify(keenEventJsonSchema(), null, 2));
 */
export function keenEventJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(KeenEvent, { target: "draft-2020-12", io: "output", unrepresentable: "any" }) as Record<string, unknown>;
}
