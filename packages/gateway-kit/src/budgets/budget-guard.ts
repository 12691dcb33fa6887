import type { Middleware, ParameterizedContext } from "koa";
import * as z from "zod";
import { HttpError } from "../http-error.js";
import { functionOption, parseOptions } from "../options.js";
import type { Principal } from "../principal.js";
import type { Budgets, BudgetScope, BudgetStatus } from "./types.js";

/** What `budgetGuard` learned, on `ctx.state.budget`. */
export interface BudgetState {
  scopes: BudgetScope[];
  estimate: number;
  statuses: BudgetStatus[];
  /** The least any budget of the scopes has left; `undefined` when no budget applies. */
  remaining: number | undefined;
}

declare module "koa" {
  interface DefaultState {
    budget?: BudgetState;
  }
}

/**
 * The budget scopes of a principal: the user, the team (when the principal has one) and
 * optionally a project.
 *
 * @example
 * budgets.check(budgetScopesOf(ctx.state.principal!, ctx.params.projectId), estimate);
 */
export function budgetScopesOf(principal: Principal, projectId?: string): BudgetScope[] {
  const scopes: BudgetScope[] = [{ kind: "user", id: principal.userId }];
  if (principal.teamId) scopes.push({ kind: "team", id: principal.teamId });
  if (projectId) scopes.push({ kind: "project", id: projectId });
  return scopes;
}

type Ctx = ParameterizedContext;

const BudgetGuardOptions = z
  .object({
    budgets: z.custom<Budgets>((v) => typeof (v as Budgets)?.check === "function", "budgets must come from createKyselyBudgets"),
    /** The estimated cost of what the request starts, in micro-credits. */
    estimate: functionOption<(ctx: Ctx) => number | Promise<number>>(),
    /** Which budgets apply. Default: the principal's user and team (`budgetScopesOf`). */
    scopes: functionOption<(ctx: Ctx) => BudgetScope[] | Promise<BudgetScope[]>>().optional(),
  })
  .strict();
export type BudgetGuardOptions = z.input<typeof BudgetGuardOptions>;

/**
 * Refuses a request with 402 `budget_exceeded` (details: scope, period, limit, spent,
 * remaining, requested, resetsAt) when its estimated cost does not fit in the caller's
 * budgets, and puts the budget state on `ctx.state.budget` for the route (e.g. for `routeByCost`).
 * It holds nothing (two concurrent requests can both pass): to hold the cost in the wallet and
 * the budgets together until the work is settled, use `spendGuard`.
 *
 * @example
 * router.post("/v1/runs", authenticate({ service }), budgetGuard({ budgets, estimate: (ctx) => estimateRun(ctx.request.body) }), startRun);
 */
export function budgetGuard(input: BudgetGuardOptions): Middleware {
  const { budgets, estimate, scopes } = parseOptions(BudgetGuardOptions, input, "budgetGuard");
  return async (ctx, next) => {
    let applicable: BudgetScope[];
    if (scopes) applicable = await scopes(ctx);
    else {
      const principal = ctx.state.principal;
      if (!principal) throw new HttpError(401, "unauthenticated", "Authentication required");
      applicable = budgetScopesOf(principal);
    }
    const amount = await estimate(ctx);
    // The estimate usually comes from the request body: junk there is the client's error.
    if (typeof amount !== "number" || !Number.isSafeInteger(amount) || amount < 0) {
      throw new HttpError(400, "invalid_estimate", "The request's estimated cost is not a non-negative whole number of micro-credits");
    }
    const statuses = await budgets.check(applicable, amount);
    const remaining = statuses.length ? Math.min(...statuses.map((s) => s.remaining)) : undefined;
    ctx.state.budget = { scopes: applicable, estimate: amount, statuses, remaining };
    return next();
  };
}
