import { sql, type Kysely } from "kysely";
import { defineMigrations } from "../db/index.js";

const ROLES = sql`role in ('owner', 'admin', 'member', 'viewer')`;

/**
 * The tables behind the auth stores. A host runs them with its other sets; names start with
 * `gk_auth_` so they sort apart from other migration sets.
 *
 * @example
 * await migrateToLatest(db, [authMigrations]);
 */
export const authMigrations = defineMigrations("gk_auth", {
  gk_auth_0001_identity: {
    up: async (db: Kysely<any>) => {
      const now = sql`now()`;
      await db.schema
        .createTable("users")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("email", "text", (c) => c.notNull().unique())
        .addColumn("email_verified", "boolean", (c) => c.notNull().defaultTo(false))
        .addColumn("password_hash", "text")
        .addColumn("display_name", "text")
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(now))
        .addColumn("password_changed_at", "timestamptz")
        .execute();
      await db.schema
        .createTable("teams")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("name", "text", (c) => c.notNull())
        .addColumn("personal", "boolean", (c) => c.notNull().defaultTo(false))
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(now))
        .execute();
      await db.schema
        .createTable("memberships")
        .addColumn("team_id", "text", (c) => c.notNull().references("teams.id").onDelete("cascade"))
        .addColumn("user_id", "text", (c) => c.notNull().references("users.id").onDelete("cascade"))
        .addColumn("role", "text", (c) => c.notNull().check(ROLES))
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(now))
        .addPrimaryKeyConstraint("memberships_pk", ["team_id", "user_id"])
        .execute();
      await db.schema.createIndex("memberships_user_idx").on("memberships").column("user_id").execute();
    },
  },
  gk_auth_0002_sessions_and_keys: {
    up: async (db: Kysely<any>) => {
      const now = sql`now()`;
      await db.schema
        .createTable("auth_sessions")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("user_id", "text", (c) => c.notNull().references("users.id").onDelete("cascade"))
        .addColumn("team_id", "text", (c) => c.references("teams.id").onDelete("set null"))
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(now))
        .addColumn("last_seen_at", "timestamptz", (c) => c.notNull().defaultTo(now))
        .addColumn("expires_at", "timestamptz", (c) => c.notNull())
        .addColumn("revoked_at", "timestamptz")
        .addColumn("revoke_reason", "text")
        .addColumn("user_agent", "text")
        .addColumn("ip", "text")
        .execute();
      await db.schema.createIndex("auth_sessions_user_idx").on("auth_sessions").column("user_id").execute();
      // One row per refresh token; the session is the token family.
      await db.schema
        .createTable("refresh_tokens")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("session_id", "text", (c) => c.notNull().references("auth_sessions.id").onDelete("cascade"))
        .addColumn("token_hash", "text", (c) => c.notNull().unique())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(now))
        .addColumn("rotated_at", "timestamptz")
        .execute();
      await db.schema.createIndex("refresh_tokens_session_idx").on("refresh_tokens").column("session_id").execute();
      await db.schema
        .createTable("api_keys")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("prefix", "text", (c) => c.notNull().unique())
        .addColumn("secret_hash", "text", (c) => c.notNull())
        .addColumn("user_id", "text", (c) => c.notNull().references("users.id").onDelete("cascade"))
        .addColumn("team_id", "text", (c) => c.notNull().references("teams.id").onDelete("cascade"))
        .addColumn("name", "text", (c) => c.notNull())
        .addColumn("scopes", "text", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(now))
        .addColumn("expires_at", "timestamptz")
        .addColumn("revoked_at", "timestamptz")
        .addColumn("last_used_at", "timestamptz")
        .execute();
      await db.schema.createIndex("api_keys_user_idx").on("api_keys").columns(["team_id", "user_id"]).execute();
    },
  },
  gk_auth_0003_mfa_oauth_attempts: {
    up: async (db: Kysely<any>) => {
      const now = sql`now()`;
      await db.schema
        .createTable("mfa_factors")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("user_id", "text", (c) => c.notNull().references("users.id").onDelete("cascade"))
        .addColumn("kind", "text", (c) => c.notNull().check(sql`kind in ('totp', 'webauthn', 'sms')`))
        .addColumn("label", "text")
        .addColumn("secret", "text")
        .addColumn("phone", "text")
        .addColumn("credential_id", "text", (c) => c.unique())
        .addColumn("public_key", "text")
        .addColumn("counter", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("transports", "text")
        .addColumn("last_used_step", "bigint", (c) => c.notNull().defaultTo(0))
        .addColumn("confirmed_at", "timestamptz")
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(now))
        .execute();
      await db.schema.createIndex("mfa_factors_user_idx").on("mfa_factors").column("user_id").execute();
      await db.schema
        .createTable("recovery_codes")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("user_id", "text", (c) => c.notNull().references("users.id").onDelete("cascade"))
        .addColumn("code_hash", "text", (c) => c.notNull())
        .addColumn("used_at", "timestamptz")
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(now))
        .execute();
      await db.schema.createIndex("recovery_codes_user_idx").on("recovery_codes").columns(["user_id", "code_hash"]).execute();
      await db.schema
        .createTable("oauth_accounts")
        .addColumn("provider", "text", (c) => c.notNull())
        .addColumn("subject", "text", (c) => c.notNull())
        .addColumn("user_id", "text", (c) => c.notNull().references("users.id").onDelete("cascade"))
        .addColumn("email", "text")
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(now))
        .addPrimaryKeyConstraint("oauth_accounts_pk", ["provider", "subject"])
        .execute();
      await db.schema
        .createTable("login_attempts")
        .addColumn("key", "text", (c) => c.primaryKey())
        .addColumn("failures", "integer", (c) => c.notNull())
        .addColumn("locked_until", "timestamptz")
        .addColumn("last_failure_at", "timestamptz", (c) => c.notNull())
        .execute();
      // Short-lived, single-use state: MFA challenges, OAuth state + PKCE, WebAuthn and SMS challenges.
      await db.schema
        .createTable("auth_flows")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("kind", "text", (c) => c.notNull())
        .addColumn("user_id", "text", (c) => c.references("users.id").onDelete("cascade"))
        .addColumn("data", "text", (c) => c.notNull())
        .addColumn("attempts", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("expires_at", "timestamptz", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(now))
        .execute();
    },
  },
  gk_auth_0004_counters: {
    up: async (db: Kysely<any>) => {
      // Fixed-window counters: SMS sends per account, per phone number and in all.
      await db.schema
        .createTable("auth_counters")
        .addColumn("key", "text", (c) => c.primaryKey())
        .addColumn("window_start", "timestamptz", (c) => c.notNull())
        .addColumn("count", "integer", (c) => c.notNull())
        .execute();
    },
  },
  gk_auth_0005_totp_secret_key_id: {
    up: async (db: Kysely<any>) => {
      // TOTP secrets are sealed with AES-256-GCM; the key id names the key, for rotation. Rows
      // written before stay plain (null key id) until their next use re-seals them.
      await db.schema.alterTable("mfa_factors").addColumn("secret_key_id", "text").execute();
    },
  },
});
