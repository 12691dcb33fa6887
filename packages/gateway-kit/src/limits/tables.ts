import type { ColumnType } from "kysely";

/** Kysely table types of `limitMigrations`. */
export interface LimitTables {
  rate_limit_buckets: {
    key: string;
    tokens: number;
    /** int8: a string from pg, a number or bigint from PGlite. */
    updated_ms: ColumnType<string | number | bigint, number, number>;
    allowed: boolean;
  };
  run_slots: { run_id: string; scope_key: string; acquired_at: Date; lease_expires_at: Date };
  anomaly_states: { subject: string; state: string };
}
