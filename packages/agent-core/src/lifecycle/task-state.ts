import * as z from "zod";
import { KeenError } from "../errors.js";
import { Phase, RunStatus } from "../events.js";
import { Message, Usage } from "../model/model.js";
import { FinishExploreInput, SubmitPlanInput } from "./phase-tools.js";

export const MergeState = z.object({
  status: z.enum(["pending", "in_progress", "merged", "resolved", "rolled_back", "skipped"]),
  /** The parent's HEAD before the merge started: where a rollback or a resumed merge resets to. */
  preMergeSha: z.string().optional(),
});
export type MergeState = z.infer<typeof MergeState>;

/** A file as a turn left it: its bytes and permission bits, or (no `mode`) its absence. */
export const FileState = z
  .object({
    path: z.string().min(1),
    mode: z.number().int().min(0).max(0o7777).optional(),
    text: z.string().optional(),
    base64: z.string().optional(),
  })
  .refine((state) => (state.mode === undefined ? state.text === undefined && state.base64 === undefined : (state.text === undefined) !== (state.base64 === undefined)), {
    message: "a file state holds text or base64 with a mode, or neither for an absent file",
  });

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
  /**
   * Model turns this agent has completed (its tool results in `messages`). A checkpoint labelled
   * with a turn equal to this one was taken before a turn that never completed.
   */
  turns: z.number().int().nonnegative().optional(),
  /**
   * Set while the agent's files are those of its checkpoint of this turn plus `journal`: every
   * turn since ran only read-only tools and keen's own file tools, so no new checkpoint was
   * taken, and the one labelled with this turn, with the journal written over it, is also the
   * checkpoint of turn `turns`.
   */
  unchangedSince: z.number().int().nonnegative().optional(),
  /**
   * With `unchangedSince`: each file keen's file tools wrote since that checkpoint, as the last
   * completed turn left it (see `turn-checkpoints.ts`). Absent or empty: none was written.
   */
  journal: z.array(FileState).optional(),
  /**
   * The agent's checkpoint of turn `turn`, when it is the files of commit `commit` and was kept
   * here instead of under a ref (its worktree had been checked out at that commit, unchanged, when
   * the turn began; see `turn-checkpoints.ts`). A checkpoint ref of the agent, when there is one,
   * supersedes it: it was saved later.
   */
  checkpointCommit: z.object({ turn: z.number().int().nonnegative(), commit: z.string().regex(/^(?:[0-9a-f]{40}|[0-9a-f]{64})$/) }).optional(),
  /** Why the agent ended as it did, when it did not succeed. */
  error: z.object({ code: z.string(), message: z.string() }).optional(),
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
  /** Most US dollars the whole run may cost (keen's price table; needs a model it knows). */
  maxBudgetUsd: z.number().positive().optional(),
});
export type TaskLimits = z.infer<typeof TaskLimits>;

/** The snapshot format this version of keen writes. */
export const SNAPSHOT_VERSION = 5;
/** Snapshot formats this version of keen reads (older ones are upgraded by `readSnapshot`). */
export const READABLE_SNAPSHOT_VERSIONS = [1, 2, 3, 4, 5] as const;

const CurrentSnapshot = z.object({
  version: z.literal(SNAPSHOT_VERSION),
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
  /** The commit the run started from (its base), when known. */
  base: z.string().optional(),
  /** The root's run branch, when the run works on one (`branch` option): resume re-attaches to it. */
  runBranch: z.string().optional(),
});

/**
 * The state of a whole run, as handed to `onSnapshot`. Parsing accepts every readable version
 * and upgrades it to the current one (see `upgradeSnapshot`).
 */
export const TaskSnapshot = z.preprocess((value) => upgradeSnapshot(value), CurrentSnapshot);
export type TaskSnapshot = z.infer<typeof CurrentSnapshot>;

/**
 * The upgrade steps, one per version: version 2 added optional fields (`base`, an agent's
 * `error`), so a version-1 snapshot upgrades by its version number alone; so does a version-2
 * one to version 3 (an agent's `unchangedSince`, which an older keen would drop and then not
 * restore a turn it must), a version-3 one to version 4 (an agent's `journal`, which an
 * older keen would drop and then put back files without what keen's file tools wrote), and a
 * version-4 one to version 5 (an agent's `checkpointCommit`, which an older keen would drop and
 * then not restore a turn it must, or restore an older checkpoint). Values
 * of other versions pass through unchanged (and fail validation, naming the version).
 */
function upgradeSnapshot(value: unknown): unknown {
  if (value === null || typeof value !== "object") return value;
  let current = value as Record<string, unknown>;
  if (current.version === 1) current = { ...current, version: 2 };
  if (current.version === 2) current = { ...current, version: 3 };
  if (current.version === 3) current = { ...current, version: 4 };
  if (current.version === 4) current = { ...current, version: 5 };
  return current;
}

/**
 * Reads a snapshot of any readable version and returns it in the current format; a version it
 * cannot read fails with code `snapshot_version`, naming the versions it can.
 *
 * @example
 * const snapshot = readSnapshot(JSON.parse(await readFile("run.json", "utf8")));
 */
export function readSnapshot(value: unknown): TaskSnapshot {
  const version = (value as { version?: unknown } | null)?.version;
  if (!READABLE_SNAPSHOT_VERSIONS.includes(version as never)) {
    throw new KeenError(
      "snapshot_version",
      `This snapshot has version ${JSON.stringify(version)}; this keen reads versions ${READABLE_SNAPSHOT_VERSIONS.join(", ")}`,
    );
  }
  return TaskSnapshot.parse(value);
}
