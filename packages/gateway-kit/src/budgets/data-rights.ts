import type { Kysely } from "kysely";
import type { DataRightsContributor } from "../privacy/index.js";
import type { BudgetTables } from "./tables.js";

const text = (value: unknown) => (value == null ? null : String(value));
const iso = (value: unknown) => (value == null ? null : new Date(value as string | Date).toISOString());

/**
 * The budgets' part in a user's data rights (`budgetMigrations`).
 *
 * Export: the budgets set on the user (scope `user:<id>`) with their spend per period and the
 * alerts they fired, and the charges recorded against the user's scope.
 *
 * Erasure: the user's own budgets go, with their spend and alerts. Charges that also counted
 * against a team or project stay (they are the team's accounting and its idempotency record);
 * they name the user only by opaque id.
 *
 * @example
 * await eraseUserData(db, userId, [authDataRights(), auditDataRights(), creditsDataRights, budgetsDataRights]);
 */
export const budgetsDataRights: DataRightsContributor = {
  name: "budgets",
  async export(db: Kysely<any>, userId: string) {
    const b = db as Kysely<BudgetTables>;
    const budgets = await b.selectFrom("budgets").selectAll().where("scope_kind", "=", "user").where("scope_id", "=", userId).orderBy("created_at").execute();
    const ids = budgets.map((row) => row.id);
    const spend = ids.length ? await b.selectFrom("budget_spend").selectAll().where("budget_id", "in", ids).orderBy("period_key").execute() : [];
    const alerts = ids.length ? await b.selectFrom("budget_alerts").selectAll().where("budget_id", "in", ids).orderBy("fired_at").execute() : [];
    // Scopes are stored as a JSON array of "kind:id" strings.
    const charges = await b.selectFrom("budget_charges").selectAll().where("scopes", "like", `%${JSON.stringify(`user:${userId}`).replace(/[\\%_]/g, (c) => `\\${c}`)}%`).orderBy("created_at").execute();
    return {
      budgets: budgets.map((row) => ({
        id: row.id,
        period: row.period,
        limit: text(row.limit_micros),
        thresholds: JSON.parse(row.thresholds),
        createdAt: iso(row.created_at),
        spend: spend.filter((s) => s.budget_id === row.id).map((s) => ({ periodKey: s.period_key, spent: text(s.spent_micros) })),
        alerts: alerts.filter((a) => a.budget_id === row.id).map((a) => ({ periodKey: a.period_key, threshold: a.threshold, spent: text(a.spent_micros), firedAt: iso(a.fired_at) })),
      })),
      charges: charges.map((c) => ({
        idempotencyKey: c.idempotency_key,
        amount: text(c.amount_micros),
        scopes: JSON.parse(c.scopes),
        mode: c.mode,
        settled: text(c.settled_micros),
        createdAt: iso(c.created_at),
      })),
    };
  },
  async erase(db: Kysely<any>, userId: string) {
    // Spend and alerts go with their budget (on delete cascade).
    await (db as Kysely<BudgetTables>).deleteFrom("budgets").where("scope_kind", "=", "user").where("scope_id", "=", userId).execute();
  },
};
