import * as z from "zod";
import { Phase, RunStatus } from "../events.js";

/**
 * What a phase function returns: the next phase (with an optional note shown to the agent as it
 * enters it, and a report placed before the phase instruction), or DONE with the agent's outcome.
 */
export const Step = z.union([
  z.object({
    next: Phase,
    /** Why the agent goes there, shown in the phase instruction (e.g. "the plan has no subtasks"). */
    note: z.string().optional(),
    /** Text placed before the phase instruction (e.g. the children's report). */
    report: z.string().optional(),
  }),
  z.object({
    next: z.literal("DONE"),
    status: RunStatus,
    summary: z.string(),
    error: z.object({ code: z.string(), message: z.string() }).optional(),
  }),
]);
export type Step = z.infer<typeof Step>;
export type NextPhase = Step["next"];
