import { randomUUID } from "node:crypto";
import type { Middleware, ParameterizedContext } from "koa";
import { z } from "zod";
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
  /** In `reserve` mode: the key to `settle` the reservation with once the run's cost is known. */
  reservationKey?: string;
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
    /**
     * `check` (default): refuse what does not fit, hold nothing. `reserve`: also reserve the
     * estimate atomically, so concurrent requests cannot overspend; settle it later with
     * `budgets.settle(ctx.state.budget.reservationKey, actual)`. A failed request releases it.
     */
    mode: z.enum(["check", "reserve"]).default("check"),
    /** The reservation's idempotency key in `reserve` mode. Default a random UUID. */
    reservationKey: functionOption<(ctx: Ctx) => string>().optional(),
  })
  .strict();
export type BudgetGuardOptions = z.input<typeof BudgetGuardOptions>;

/**
 * Refuses a request with 402 `budget_exceeded` (details: scope, period, limit, spent,
 * remaining, requested, resetsAt) when its estimated cost does not fit in the caller's
 * budgets, and puts the budget state on `ctx.state.budget` for the route (e.g. for `routeByCost`).
 * With `mode: "reserve"` the estimate is also reserved, to be settled when the run is charged.
 *
 * @example
 * router.post("/v1/runs", authenticate({ service }), budgetGuard({ budgets, estimate: (ctx) => estimateRun(ctx.request.body) }), startRun);
 */
export function budgetGuard(input: BudgetGuardOptions): Middleware {
  const { budgets, estimate, scopes, mode, reservationKey } = parseOptions(BudgetGuardOptions, input, "budgetGuard");
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
    if (mode === "check") {
      const statuses = await budgets.check(applicable, amount);
      const remaining = statuses.length ? Math.min(...statuses.map((s) => s.remaining)) : undefined;
      ctx.state.budget = { scopes: applicable, estimate: amount, statuses, remaining };
      return next();
    }
    const key = reservationKey ? reservationKey(ctx) : randomUUID();
    const { statuses, replayed } = await budgets.reserve(applicable, amount, key);
    const remaining = statuses.length ? Math.min(...statuses.map((s) => s.remaining)) : undefined;
    ctx.state.budget = { scopes: applicable, estimate: amount, statuses, remaining, reservationKey: key };
    try {
      await next();
    } catch (error) {
      // A request that reused another's reservation key did not make the reservation: it is not its to free.
      if (!replayed) await budgets.settle(key, 0).catch(() => undefined);
      throw error;
    }
  };
}
