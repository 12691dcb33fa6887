import { BudgetAmount, BudgetPeriod } from "@keen/gateway-kit";
import * as z from "zod";

/** `GET /v1/budgets`: the team whose budgets to show (default the caller's current one). */
export const BudgetsQuery = z.object({ teamId: z.string().min(1).max(100).optional() }).strict();

/**
 * `PUT /v1/budgets`: sets (or with `limit: null` removes) the team's budget for a period, or
 * the caller's own budget across every team.
 */
export const PutBudgetBody = z
  .object({
    scope: z.enum(["team", "user"]),
    teamId: z.string().min(1).max(100).optional(),
    period: BudgetPeriod,
    limit: BudgetAmount.nullable(),
    thresholds: z.array(z.number().int().min(1).max(1000)).max(20).optional(),
  })
  .strict();
