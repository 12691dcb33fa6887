import type { Router } from "@koa/router";
import { validate, type AuthService, type BudgetScope, type BudgetStatus, type KyselyBudgets } from "@keen/gateway-kit";
import type { Kysely } from "kysely";
import type * as z from "zod";
import { ServerError } from "../errors.js";
import { requestedTeam, teamAccess } from "../teams/access.js";
import { BudgetsQuery, PutBudgetBody } from "./budget-input.js";
import { jsonBody } from "../http/json-body.js";
import { lockLiveUser } from "../privacy/live-user.js";

const view = (s: BudgetStatus) => ({
  scope: s.budget.scope.kind,
  period: s.budget.period,
  limit: s.budget.limit,
  thresholds: s.budget.thresholds,
  spent: s.spent,
  remaining: s.remaining,
  resetsAt: s.resetsAt?.toISOString() ?? null,
  updatedAt: s.budget.updatedAt.toISOString(),
});

/**
 * Budgets through gateway-kit's budget store: `GET /v1/budgets` shows the team's budgets
 * (any member) and the caller's own, with this period's spend; `PUT /v1/budgets` sets or removes
 * one. Team budgets change only with `team:manage` (owners, admins); a user budget is the
 * caller's own limit, changed only by a signed-in user (never an API key). A write takes the
 * caller's row (`lockLiveUser`) in its own transaction, as every request that writes for a user
 * does: it lands before an erasure of the caller starts (which then deletes a user budget), or
 * it is refused with 410 `account_erased`.
 */
export function mountBudgetRoutes(router: Router, deps: { db: Kysely<any>; auth: AuthService; budgets: KyselyBudgets }): void {
  const { db, auth, budgets } = deps;
  const json = jsonBody({ limit: 4 * 1024 });

  const show = async (teamId: string, userId: string) => {
    const team: BudgetScope = { kind: "team", id: teamId };
    const user: BudgetScope = { kind: "user", id: userId };
    const [teamStatus, userStatus] = await Promise.all([budgets.status([team]), budgets.status([user])]);
    return { teamId, team: teamStatus.map(view), user: userStatus.map(view) };
  };

  router.get("/budgets", validate({ query: BudgetsQuery }), async (ctx) => {
    const principal = ctx.state.principal!;
    const query = ctx.state.validated!.query as z.output<typeof BudgetsQuery>;
    const access = await teamAccess(auth, principal, requestedTeam(principal, query.teamId), "team:read");
    ctx.body = await show(access.teamId, principal.userId);
  });

  router.put("/budgets", json, validate({ body: PutBudgetBody }), async (ctx) => {
    const principal = ctx.state.principal!;
    const body = ctx.state.validated!.body as z.output<typeof PutBudgetBody>;
    const access = await teamAccess(auth, principal, requestedTeam(principal, body.teamId), body.scope === "team" ? "team:manage" : undefined);
    if (body.scope === "user" && principal.via !== "jwt") throw new ServerError("forbidden", "A user budget is changed by its signed-in user, not an API key");
    const scope: BudgetScope = body.scope === "team" ? { kind: "team", id: access.teamId } : { kind: "user", id: principal.userId };
    await db.transaction().execute(async (trx) => {
      await lockLiveUser(trx, principal.userId);
      if (body.limit === null) await budgets.removeBudgetIn(trx, scope, body.period);
      else await budgets.setBudgetIn(trx, { scope, period: body.period, limit: body.limit, ...(body.thresholds ? { thresholds: body.thresholds } : {}) });
    });
    ctx.body = await show(access.teamId, principal.userId);
  });
}
