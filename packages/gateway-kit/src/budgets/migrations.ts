import { sql, type Kysely } from "kysely";
import { defineMigrations } from "../db/index.js";

/**
 * The tables behind `createKyselyBudgets`: budget definitions, spend per period, the
 * idempotency record of every charge, and fired threshold alerts (one row per budget, period
 * and threshold, which is what makes "an alert fires once" hold under concurrency).
 *
 * @example
 * await migrateToLatest(db, [budgetMigrations]);
 */
export const budgetMigrations = defineMigrations("gk_budgets", {
  gk_budgets_0001_budgets: {
    up: async (db: Kysely<any>) => {
      const now = sql`now()`;
      await db.schema
        .createTable("budgets")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("scope_kind", "text", (c) => c.notNull().check(sql`scope_kind in ('user', 'team', 'project')`))
        .addColumn("scope_id", "text", (c) => c.notNull())
        .addColumn("period", "text", (c) => c.notNull().check(sql`period in ('daily', 'monthly', 'total')`))
        .addColumn("limit_micros", "bigint", (c) => c.notNull().check(sql`limit_micros >= 0`))
        .addColumn("thresholds", "text", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(now))
        .addColumn("updated_at", "timestamptz", (c) => c.notNull().defaultTo(now))
        .addUniqueConstraint("budgets_scope_period_uq", ["scope_kind", "scope_id", "period"])
        .execute();
      await db.schema
        .createTable("budget_spend")
        .addColumn("budget_id", "text", (c) => c.notNull().references("budgets.id").onDelete("cascade"))
        .addColumn("period_key", "text", (c) => c.notNull())
        .addColumn("spent_micros", "bigint", (c) => c.notNull().defaultTo(0).check(sql`spent_micros >= 0`))
        .addPrimaryKeyConstraint("budget_spend_pk", ["budget_id", "period_key"])
        .execute();
      await db.schema
        .createTable("budget_charges")
        .addColumn("idempotency_key", "text", (c) => c.primaryKey())
        .addColumn("amount_micros", "bigint", (c) => c.notNull().check(sql`amount_micros >= 0`))
        .addColumn("scopes", "text", (c) => c.notNull())
        .addColumn("mode", "text", (c) => c.notNull().check(sql`mode in ('record', 'commit')`))
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(now))
        .execute();
      await db.schema
        .createTable("budget_alerts")
        .addColumn("budget_id", "text", (c) => c.notNull().references("budgets.id").onDelete("cascade"))
        .addColumn("period_key", "text", (c) => c.notNull())
        .addColumn("threshold", "integer", (c) => c.notNull())
        .addColumn("spent_micros", "bigint", (c) => c.notNull())
        .addColumn("limit_micros", "bigint", (c) => c.notNull())
        .addColumn("fired_at", "timestamptz", (c) => c.notNull())
        .addColumn("delivered_at", "timestamptz")
        .addColumn("attempts", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("last_error", "text")
        .addPrimaryKeyConstraint("budget_alerts_pk", ["budget_id", "period_key", "threshold"])
        .execute();
      await db.schema.createIndex("budget_alerts_pending_idx").on("budget_alerts").column("fired_at").where(sql.ref("delivered_at"), "is", null).execute();
    },
  },
  gk_budgets_0002_reservations: {
    up: async (db: Kysely<any>) => {
      // `reserve` charges an estimate up front and `settle` later corrects it to the actual
      // cost, in the periods the reservation was made in (kept in `parts`).
      await db.schema.alterTable("budget_charges").dropConstraint("budget_charges_mode_check").execute();
      await db.schema
        .alterTable("budget_charges")
        .addCheckConstraint("budget_charges_mode_check", sql`mode in ('record', 'commit', 'reserve')`)
        .execute();
      await db.schema.alterTable("budget_charges").addColumn("parts", "text", (c) => c.notNull().defaultTo("[]")).execute();
      await db.schema.alterTable("budget_charges").addColumn("settled_micros", "bigint").execute();
      await db.schema.alterTable("budget_charges").addColumn("settled_at", "timestamptz").execute();
      await db.schema
        .createIndex("budget_charges_open_idx")
        .on("budget_charges")
        .column("created_at")
        .where(sql<boolean>`mode = 'reserve' and settled_at is null`)
        .execute();
    },
  },
});
