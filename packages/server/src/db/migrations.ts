import {
  auditMigrations,
  authMigrations,
  billingMigrations,
  budgetMigrations,
  creditMigrations,
  limitMigrations,
  defineMigrations,
  migrateToLatest,
  migrationTableName,
  spendMigrations,
  type MigrationSet,
} from "@keen/gateway-kit";
import { sql, type Kysely } from "kysely";

/** The server's own migrations, tracked in their own table so they never mix with gateway-kit's. */
export const serverMigrations = defineMigrations("keen_server", {
  server_0001_runs: {
    async up(db) {
      await db.schema
        .createTable("runs")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("team_id", "text", (c) => c.notNull())
        .addColumn("user_id", "text", (c) => c.notNull())
        .addColumn("vision", "text", (c) => c.notNull())
        .addColumn("repo", "jsonb", (c) => c.notNull())
        .addColumn("options", "jsonb", (c) => c.notNull())
        .addColumn("model", "text", (c) => c.notNull())
        .addColumn("status", "text", (c) => c.notNull().check(sql`status in ('queued','running','succeeded','failed','cancelled')`))
        .addColumn("snapshot", "jsonb")
        .addColumn("reservation_id", "text")
        .addColumn("charged", "bigint")
        .addColumn("usage", "jsonb")
        .addColumn("error", "jsonb")
        .addColumn("summary", "text")
        .addColumn("base_commit", "text")
        .addColumn("head_commit", "text")
        .addColumn("branch", "text")
        .addColumn("worker_id", "text")
        .addColumn("attempt", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("heartbeat_at", "timestamptz")
        .addColumn("cancel_requested", "boolean", (c) => c.notNull().defaultTo(false))
        .addColumn("created_at", "timestamptz", (c) => c.notNull())
        .addColumn("started_at", "timestamptz")
        .addColumn("finished_at", "timestamptz")
        .execute();
      // Listing is per tenant, newest first, paged by (created_at, id).
      await db.schema.createIndex("runs_team_created").on("runs").columns(["team_id", "created_at", "id"]).execute();
      await db.schema.createIndex("runs_status_heartbeat").on("runs").columns(["status", "heartbeat_at"]).execute();

      await db.schema
        .createTable("run_agents")
        .addColumn("run_id", "text", (c) => c.notNull().references("runs.id").onDelete("cascade"))
        .addColumn("agent_id", "text", (c) => c.notNull())
        .addColumn("parent_id", "text")
        .addColumn("depth", "integer", (c) => c.notNull())
        .addColumn("branch", "text", (c) => c.notNull())
        .addColumn("title", "text", (c) => c.notNull())
        .addColumn("phase", "text", (c) => c.notNull())
        .addColumn("status", "text")
        .addColumn("usage", "jsonb", (c) => c.notNull())
        .addColumn("cost", "bigint", (c) => c.notNull())
        .addPrimaryKeyConstraint("run_agents_pk", ["run_id", "agent_id"])
        .execute();

      await db.schema
        .createTable("run_events")
        .addColumn("run_id", "text", (c) => c.notNull().references("runs.id").onDelete("cascade"))
        .addColumn("seq", "integer", (c) => c.notNull().check(sql`seq > 0`))
        .addColumn("type", "text", (c) => c.notNull())
        .addColumn("agent_id", "text", (c) => c.notNull())
        .addColumn("payload", "jsonb", (c) => c.notNull())
        .addColumn("at", "timestamptz", (c) => c.notNull())
        // One number per event per run: a second writer of the same seq fails instead of forking the log.
        .addPrimaryKeyConstraint("run_events_pk", ["run_id", "seq"])
        .execute();

      await db.schema
        .createTable("server_settings")
        .addColumn("name", "text", (c) => c.primaryKey())
        .addColumn("value", "jsonb", (c) => c.notNull())
        .execute();
    },
  },
  server_0002_uploads: {
    async up(db) {
      await db.schema
        .createTable("uploads")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("team_id", "text", (c) => c.notNull())
        .addColumn("user_id", "text", (c) => c.notNull())
        .addColumn("format", "text", (c) => c.notNull())
        .addColumn("compressed_bytes", "bigint", (c) => c.notNull())
        .addColumn("uncompressed_bytes", "bigint", (c) => c.notNull())
        .addColumn("files", "integer", (c) => c.notNull())
        .addColumn("commit", "text", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("uploads_team").on("uploads").columns(["team_id", "created_at"]).execute();
      await db.schema
        .createTable("user_preferences")
        .addColumn("user_id", "text", (c) => c.primaryKey())
        .addColumn("keep_workspaces", "boolean", (c) => c.notNull().defaultTo(false))
        .execute();
    },
  },
  server_0003_resume: {
    async up(db) {
      // Additive: one more run state (the model stayed unavailable; the run can resume), and what
      // earlier attempts of a resumed run were charged.
      await sql`alter table runs drop constraint if exists runs_status_check`.execute(db);
      await sql`alter table runs add constraint runs_status_check check (status in ('queued','running','succeeded','failed','cancelled','interrupted'))`.execute(db);
      await db.schema.alterTable("runs").addColumn("prior_charged", "bigint", (c) => c.notNull().defaultTo(0)).execute();
    },
  },
  server_0004_team_invites: {
    async up(db) {
      await db.schema
        .createTable("team_invites")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("team_id", "text", (c) => c.notNull().references("teams.id").onDelete("cascade"))
        .addColumn("email", "text", (c) => c.notNull())
        .addColumn("role", "text", (c) => c.notNull().check(sql`role in ('owner','admin','member','viewer')`))
        .addColumn("token_hash", "text", (c) => c.notNull().unique())
        .addColumn("invited_by", "text")
        .addColumn("created_at", "timestamptz", (c) => c.notNull())
        .addColumn("expires_at", "timestamptz", (c) => c.notNull())
        .addColumn("accepted_at", "timestamptz")
        .addColumn("accepted_by", "text")
        .addColumn("revoked_at", "timestamptz")
        .execute();
      await db.schema.createIndex("team_invites_team").on("team_invites").columns(["team_id", "created_at"]).execute();
      await db.schema.createIndex("team_invites_email").on("team_invites").column("email").execute();
    },
  },
  server_0005_webhooks: {
    async up(db) {
      await db.schema
        .createTable("webhooks")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("team_id", "text", (c) => c.notNull())
        .addColumn("user_id", "text", (c) => c.notNull())
        .addColumn("url", "text", (c) => c.notNull())
        .addColumn("events", "jsonb", (c) => c.notNull())
        .addColumn("secret", "text", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("webhooks_team").on("webhooks").columns(["team_id", "created_at"]).execute();
      await db.schema
        .createTable("webhook_messages")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("webhook_id", "text", (c) => c.notNull().references("webhooks.id").onDelete("cascade"))
        .addColumn("team_id", "text", (c) => c.notNull())
        .addColumn("event_type", "text", (c) => c.notNull())
        .addColumn("subject", "text", (c) => c.notNull())
        .addColumn("body", "text", (c) => c.notNull())
        .addColumn("status", "text", (c) => c.notNull().check(sql`status in ('pending','delivered','failed')`))
        .addColumn("attempts", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("next_attempt_at", "timestamptz")
        .addColumn("created_at", "timestamptz", (c) => c.notNull())
        // One message per endpoint per event, however often the run's end is reported.
        .addUniqueConstraint("webhook_messages_once", ["webhook_id", "event_type", "subject"])
        .execute();
      await db.schema.createIndex("webhook_messages_pending").on("webhook_messages").columns(["status", "next_attempt_at"]).execute();
      await db.schema
        .createTable("webhook_deliveries")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("message_id", "text", (c) => c.notNull().references("webhook_messages.id").onDelete("cascade"))
        .addColumn("webhook_id", "text", (c) => c.notNull().references("webhooks.id").onDelete("cascade"))
        .addColumn("attempt", "integer", (c) => c.notNull())
        .addColumn("status_code", "integer")
        .addColumn("duration_ms", "integer", (c) => c.notNull())
        .addColumn("error", "text")
        .addColumn("response_body", "text")
        .addColumn("at", "timestamptz", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("webhook_deliveries_webhook").on("webhook_deliveries").columns(["webhook_id", "at"]).execute();
    },
  },
});

/** The gateway-kit modules the server uses; they migrate through gateway-kit's own runner. */
const GATEWAY_KIT_SETS: MigrationSet[] = [authMigrations, creditMigrations, billingMigrations, budgetMigrations, spendMigrations, limitMigrations, auditMigrations];

export const SERVER_MIGRATION_TABLE = migrationTableName(serverMigrations.module);

/**
 * Brings the database up to date: gateway-kit's modules first (ours are read beside theirs), then
 * the server's own, each module with its own bookkeeping table. The one place the server migrates.
 *
 * @example
 * await migrateServer(database.db);
 */
export async function migrateServer(db: Kysely<any>): Promise<{ applied: string[] }> {
  const reports = await migrateToLatest(db, [...GATEWAY_KIT_SETS, serverMigrations]);
  const applied = reports.flatMap((report) => report.results.filter((r) => r.status === "Success").map((r) => r.migrationName));
  return { applied };
}
