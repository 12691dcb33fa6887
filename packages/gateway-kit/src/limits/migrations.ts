import type { Kysely } from "kysely";
import { defineMigrations } from "../db/index.js";

/**
 * The tables behind the PostgreSQL rate-limit, run-slot and anomaly-baseline stores.
 *
 * @example
 * await migrateToLatest(db, [limitMigrations]);
 */
export const limitMigrations = defineMigrations("gk_limits", {
  gk_limits_0001_rate_limits_and_slots: {
    up: async (db: Kysely<any>) => {
      // One token bucket per key; `updated_ms` is the clock of the process that last touched it.
      await db.schema
        .createTable("rate_limit_buckets")
        .addColumn("key", "text", (c) => c.primaryKey())
        .addColumn("tokens", "double precision", (c) => c.notNull())
        .addColumn("updated_ms", "bigint", (c) => c.notNull())
        .addColumn("allowed", "boolean", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("rate_limit_buckets_updated_idx").on("rate_limit_buckets").column("updated_ms").execute();
      // One row per run and scope it counts against; a lease that is not renewed expires.
      await db.schema
        .createTable("run_slots")
        .addColumn("run_id", "text", (c) => c.notNull())
        .addColumn("scope_key", "text", (c) => c.notNull())
        .addColumn("acquired_at", "timestamptz", (c) => c.notNull())
        .addColumn("lease_expires_at", "timestamptz", (c) => c.notNull())
        .addPrimaryKeyConstraint("run_slots_pk", ["run_id", "scope_key"])
        .execute();
      await db.schema.createIndex("run_slots_scope_idx").on("run_slots").columns(["scope_key", "lease_expires_at"]).execute();
    },
  },
  gk_limits_0002_anomaly_states: {
    up: async (db: Kysely<any>) => {
      // One JSON state (bucket, moving mean and variance) per metric and subject.
      await db.schema
        .createTable("anomaly_states")
        .addColumn("subject", "text", (c) => c.primaryKey())
        .addColumn("state", "text", (c) => c.notNull())
        .execute();
    },
  },
});
