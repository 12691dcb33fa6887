import { sql, type Kysely } from "kysely";
import { defineMigrations } from "../db/index.js";

/**
 * The audit log tables: `audit_log` (one row per event, chained per tenant) and `audit_heads`
 * (the last sequence number and hash of each tenant's chain, the row appends lock).
 * A trigger refuses UPDATE, DELETE and TRUNCATE on `audit_log`; the one exception is the
 * PII scrub used by erasure and retention, which may only null the personal columns.
 *
 * @example
 * await migrateToLatest(db, [authMigrations, auditMigrations]);
 */
export const auditMigrations = defineMigrations("gk_audit", {
  gk_audit_0001_log: {
    up: async (db: Kysely<any>) => {
      await db.schema
        .createTable("audit_heads")
        .addColumn("tenant_key", "text", (c) => c.primaryKey())
        .addColumn("seq", "bigint", (c) => c.notNull())
        .addColumn("hash", "text", (c) => c.notNull())
        .execute();
      await db.schema
        .createTable("audit_log")
        .addColumn("tenant_key", "text", (c) => c.notNull())
        .addColumn("seq", "bigint", (c) => c.notNull().check(sql`seq > 0`))
        .addColumn("at", "timestamptz", (c) => c.notNull())
        .addColumn("action", "text", (c) => c.notNull())
        .addColumn("result", "text", (c) => c.notNull().check(sql`result in ('success', 'failure', 'denied')`))
        // Personal columns: committed to by pii_digest, nulled by a scrub.
        .addColumn("actor_id", "text")
        .addColumn("target", "text")
        .addColumn("ip", "text")
        .addColumn("request_id", "text")
        .addColumn("details", "text")
        .addColumn("pii_salt", "text")
        .addColumn("pii_digest", "text", (c) => c.notNull())
        .addColumn("prev_hash", "text", (c) => c.notNull())
        .addColumn("hash", "text", (c) => c.notNull())
        .addColumn("scrubbed_at", "timestamptz")
        .addPrimaryKeyConstraint("audit_log_pk", ["tenant_key", "seq"])
        .execute();
      await db.schema.createIndex("audit_log_actor_idx").on("audit_log").column("actor_id").execute();
      await db.schema.createIndex("audit_log_at_idx").on("audit_log").column("at").execute();
      await sql`
        create function gk_audit_guard() returns trigger language plpgsql as $$
        begin
          if tg_op = 'UPDATE' and coalesce(current_setting('keen.audit_scrub', true), '') = 'on'
            and new.tenant_key = old.tenant_key and new.seq = old.seq and new.at = old.at
            and new.action = old.action and new.result = old.result and new.pii_digest = old.pii_digest
            and new.prev_hash = old.prev_hash and new.hash = old.hash
            and new.actor_id is null and new.target is null and new.ip is null and new.request_id is null
            and new.details is null and new.pii_salt is null and new.scrubbed_at is not null then
            return new;
          end if;
          raise exception 'audit_log is append-only: % refused', tg_op using errcode = '42501';
        end
        $$`.execute(db);
      await sql`create trigger audit_log_append_only before update or delete on audit_log for each row execute function gk_audit_guard()`.execute(db);
      await sql`create trigger audit_log_no_truncate before truncate on audit_log for each statement execute function gk_audit_guard()`.execute(db);
    },
  },
  gk_audit_0002_restricted_scrub: {
    up: async (db: Kysely<any>) => {
      const { rows } = await sql<{ schema: string }>`select current_schema() as schema`.execute(db);
      const schema = rows[0]!.schema;
      // A scrub update passes only when run by the owner of audit_log, i.e. inside
      // gk_audit_scrub (SECURITY DEFINER, owned by the migrating role). An application role that
      // does not own the tables cannot pass it by setting keen.audit_scrub itself. Scrub records
      // (action audit.scrub) hold no personal data and are never scrubbed: they are what
      // verifyAuditChain checks every scrubbed row against.
      await sql`
        create or replace function gk_audit_guard() returns trigger language plpgsql as $$
        begin
          if tg_op = 'UPDATE' and coalesce(current_setting('keen.audit_scrub', true), '') = 'on'
            and current_user = (select tableowner from pg_tables where schemaname = tg_table_schema and tablename = tg_table_name)
            and old.action <> 'audit.scrub'
            and new.tenant_key = old.tenant_key and new.seq = old.seq and new.at = old.at
            and new.action = old.action and new.result = old.result and new.pii_digest = old.pii_digest
            and new.prev_hash = old.prev_hash and new.hash = old.hash
            and new.actor_id is null and new.target is null and new.ip is null and new.request_id is null
            and new.details is null and new.pii_salt is null and new.scrubbed_at is not null then
            return new;
          end if;
          raise exception 'audit_log is append-only: % refused', tg_op using errcode = '42501';
        end
        $$`.execute(db);
      await sql`
        create function gk_audit_scrub(p_actor text, p_targets text[], p_before timestamptz, p_at timestamptz, p_ips text[] default null)
        returns table (tenant_key text, seq bigint)
        language plpgsql security definer set search_path = ${sql.id(schema)}, pg_temp as $$
        begin
          if p_actor is null and coalesce(cardinality(p_targets), 0) = 0 and p_before is null and coalesce(cardinality(p_ips), 0) = 0 then
            raise exception 'gk_audit_scrub needs an actor, targets, ips or a cutoff' using errcode = '22023';
          end if;
          perform set_config('keen.audit_scrub', 'on', true);
          return query
            update audit_log a
            set actor_id = null, target = null, ip = null, request_id = null, details = null, pii_salt = null, scrubbed_at = p_at
            where a.scrubbed_at is null and a.action <> 'audit.scrub'
              and (p_before is null or a.at < p_before)
              and (
                (p_actor is null and coalesce(cardinality(p_targets), 0) = 0 and coalesce(cardinality(p_ips), 0) = 0)
                or a.actor_id = p_actor
                or a.target = any (p_targets)
                or a.ip = any (p_ips)
              )
            returning a.tenant_key, a.seq;
          perform set_config('keen.audit_scrub', 'off', true);
        end
        $$`.execute(db);
      await sql`revoke all on function gk_audit_scrub(text, text[], timestamptz, timestamptz, text[]) from public`.execute(db);
    },
  },
});
