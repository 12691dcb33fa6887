import * as z from "zod";

/**
 * An amount of credits in integer micro-credits (1 credit = 1,000,000 micro-credits), carried as a
 * JavaScript number: always a safe integer (|n| < 2^53, about 9 billion credits), never a float.
 * The ledger, budgets and spend all count in it.
 */
export type MicroCredits = number;

/**
 * The schema of a non-negative `MicroCredits` amount, for options and request bodies.
 *
 * @example
 * const Body = z.object({ limit: MicroCredits });
 */
export const MicroCredits = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
