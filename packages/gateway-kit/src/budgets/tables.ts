import type { ColumnType } from "kysely";

type Timestamp = ColumnType<Date, Date | undefined, Date>;
type NullableTimestamp = ColumnType<Date | null, Date | null | undefined, Date | null>;
/** int8 comes back as a string from pg and as a number or bigint from PGlite. */
type Int8 = ColumnType<string | number | bigint, number | bigint, number | bigint>;

/** Kysely table types of `budgetMigrations`. */
export interface BudgetTables {
  budgets: {
    id: string;
    scope_kind: string;
    scope_id: string;
    period: string;
    limit_micros: Int8;
    thresholds: string;
    created_at: Timestamp;
    updated_at: Timestamp;
  };
  budget_spend: { budget_id: string; period_key: string; spent_micros: Int8 };
  budget_charges: {
    idempotency_key: string;
    amount_micros: Int8;
    scopes: string;
    mode: string;
    created_at: Timestamp;
    /** JSON `[{ budgetId, periodKey }]`: where the amount went. */
    parts: ColumnType<string, string | undefined, string>;
    settled_micros: ColumnType<string | number | bigint | null, number | null | undefined, number | null>;
    settled_at: NullableTimestamp;
  };
  budget_alerts: {
    budget_id: string;
    period_key: string;
    threshold: number;
    spent_micros: Int8;
    limit_micros: Int8;
    fired_at: Date;
    delivered_at: NullableTimestamp;
    attempts: ColumnType<number, number | undefined, number>;
    last_error: string | null;
  };
}
