import { randomUUID } from "node:crypto";
import { sql, type Kysely, type Selectable, type Transaction } from "kysely";
import { Role } from "./permissions.js";
import type { AuthTables } from "./tables.js";
import {
  DuplicateError,
  LastOwnerError,
  type ApiKeyRecord,
  type AuthFlowRecord,
  type AuthStores,
  type FactorKind,
  type MfaFactorRecord,
  type SessionRecord,
} from "./stores.js";

type Db = Kysely<AuthTables>;
type Row<T extends keyof AuthTables> = Selectable<AuthTables[T]>;

function isUniqueViolation(error: unknown): boolean {
  return (error as { code?: unknown })?.code === "23505";
}

function toSession(row: Row<"auth_sessions"> & Record<string, unknown>): SessionRecord {
  return {
    id: row.id,
    userId: row.user_id,
    teamId: row.team_id,
    createdAt: row.created_at,
    lastSeenAt: row.last_seen_at,
    expiresAt: row.expires_at,
    revokedAt: row.revoked_at,
    revokeReason: row.revoke_reason,
    userAgent: row.user_agent,
    ip: row.ip,
  };
}

function toApiKey(row: Row<"api_keys">): ApiKeyRecord {
  return {
    id: row.id,
    prefix: row.prefix,
    secretHash: row.secret_hash,
    userId: row.user_id,
    teamId: row.team_id,
    name: row.name,
    scopes: row.scopes.split(" ").filter(Boolean),
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    revokedAt: row.revoked_at,
    lastUsedAt: row.last_used_at,
  };
}

function toFactor(row: Row<"mfa_factors">): MfaFactorRecord {
  return {
    id: row.id,
    userId: row.user_id,
    kind: row.kind as FactorKind,
    label: row.label,
    secret: row.secret,
    secretKeyId: row.secret_key_id ?? null,
    phone: row.phone,
    credentialId: row.credential_id,
    publicKey: row.public_key,
    // bigint columns come back as strings from pg and as bigint or number from PGlite.
    counter: Number(row.counter),
    transports: row.transports ? row.transports.split(" ") : [],
    lastUsedStep: Number(row.last_used_step),
    confirmedAt: row.confirmed_at,
    createdAt: row.created_at,
  };
}

function parseRole(value: string | undefined | null): Role | undefined {
  const parsed = Role.safeParse(value);
  return parsed.success ? parsed.data : undefined;
}

/**
 * The kysely (PostgreSQL or PGlite) implementation of every auth store. Run `authMigrations` first.
 *
 * @example
 * const { db } = await openDatabase({ url: process.env.DATABASE_URL });
 * await migrateToLatest(db, [authMigrations]);
 * const stores = createKyselyAuthStores(db);
 */
export function createKyselyAuthStores(db: Kysely<any>): AuthStores {
  return build(db as Db, false);
}

function build(db: Db, inTransaction: boolean): AuthStores {
  /** Runs `work` in a transaction, or in the caller's when these stores already are. */
  const atomically = <T>(work: (inner: Db) => Promise<T>): Promise<T> =>
    inTransaction ? work(db) : db.transaction().execute((trx) => work(trx));

  /** Locks the team row, then refuses when `userId` is its only owner. */
  async function guardLastOwner(inner: Db, teamId: string, userId: string): Promise<void> {
    await inner.selectFrom("teams").select("id").where("id", "=", teamId).forUpdate().executeTakeFirst();
    const owners = await inner.selectFrom("memberships").select("user_id").where("team_id", "=", teamId).where("role", "=", "owner").execute();
    if (owners.length === 1 && owners[0]!.user_id === userId) throw new LastOwnerError(teamId);
  }

  const stores: AuthStores = {
    users: {
      async create(user, at) {
        try {
          await db
            .insertInto("users")
            .values({
              id: user.id,
              email: user.email,
              email_verified: user.emailVerified,
              password_hash: user.passwordHash,
              display_name: user.displayName,
              created_at: at,
              password_changed_at: user.passwordHash ? at : null,
            })
            .execute();
        } catch (error) {
          if (isUniqueViolation(error)) throw new DuplicateError("Email already registered");
          throw error;
        }
        return { ...user, createdAt: at };
      },
      async findById(id) {
        const row = await db.selectFrom("users").selectAll().where("id", "=", id).executeTakeFirst();
        return row && toUser(row);
      },
      async findByEmail(email) {
        const row = await db.selectFrom("users").selectAll().where("email", "=", email).executeTakeFirst();
        return row && toUser(row);
      },
      async setPassword(id, passwordHash, at) {
        await db.updateTable("users").set({ password_hash: passwordHash, password_changed_at: at }).where("id", "=", id).execute();
      },
      async markEmailVerified(id, email) {
        let update = db.updateTable("users").set({ email_verified: true }).where("id", "=", id);
        if (email !== undefined) update = update.where("email", "=", email);
        const result = await update.executeTakeFirst();
        return Number(result.numUpdatedRows) > 0;
      },
    },
    teams: {
      async create(team, at) {
        await db.insertInto("teams").values({ ...team, created_at: at }).execute();
        return team;
      },
      async addMember(teamId, userId, role, at) {
        await db.insertInto("memberships").values({ team_id: teamId, user_id: userId, role, created_at: at }).execute();
      },
      async setRole(teamId, userId, role) {
        return atomically(async (inner) => {
          if (role !== "owner") await guardLastOwner(inner, teamId, userId);
          const result = await inner
            .updateTable("memberships")
            .set({ role })
            .where("team_id", "=", teamId)
            .where("user_id", "=", userId)
            .executeTakeFirst();
          return Number(result.numUpdatedRows) > 0;
        });
      },
      async removeMember(teamId, userId, at) {
        return atomically(async (inner) => {
          await guardLastOwner(inner, teamId, userId);
          const result = await inner.deleteFrom("memberships").where("team_id", "=", teamId).where("user_id", "=", userId).executeTakeFirst();
          if (Number(result.numDeletedRows) === 0) return false;
          await inner
            .updateTable("api_keys")
            .set({ revoked_at: at })
            .where("team_id", "=", teamId)
            .where("user_id", "=", userId)
            .where("revoked_at", "is", null)
            .execute();
          return true;
        });
      },
      async roleOf(userId, teamId) {
        const row = await db
          .selectFrom("memberships")
          .select("role")
          .where("team_id", "=", teamId)
          .where("user_id", "=", userId)
          .executeTakeFirst();
        return parseRole(row?.role);
      },
      async memberships(userId) {
        const rows = await db
          .selectFrom("memberships")
          .innerJoin("teams", "teams.id", "memberships.team_id")
          .select(["memberships.team_id", "memberships.role", "teams.name", "teams.personal"])
          .where("memberships.user_id", "=", userId)
          .orderBy("teams.personal", "desc")
          .orderBy("memberships.created_at")
          .execute();
        return rows.flatMap((r) => {
          const role = parseRole(r.role);
          return role ? [{ teamId: r.team_id, userId, role, teamName: r.name, personal: r.personal }] : [];
        });
      },
    },
    refreshTokens: {
      async createSession(session) {
        await db
          .insertInto("auth_sessions")
          .values({
            id: session.id,
            user_id: session.userId,
            team_id: session.teamId,
            created_at: session.createdAt,
            last_seen_at: session.lastSeenAt,
            expires_at: session.expiresAt,
            user_agent: session.userAgent,
            ip: session.ip,
          })
          .execute();
      },
      async addToken(token) {
        await db
          .insertInto("refresh_tokens")
          .values({ id: token.id, session_id: token.sessionId, token_hash: token.tokenHash, created_at: token.createdAt })
          .execute();
      },
      async findByHash(tokenHash) {
        const row = await db
          .selectFrom("refresh_tokens as t")
          .innerJoin("auth_sessions as s", "s.id", "t.session_id")
          .select([
            "t.id as token_id",
            "t.created_at as token_created_at",
            "t.rotated_at",
            "s.id",
            "s.user_id",
            "s.team_id",
            "s.created_at",
            "s.last_seen_at",
            "s.expires_at",
            "s.revoked_at",
            "s.revoke_reason",
            "s.user_agent",
            "s.ip",
          ])
          .where("t.token_hash", "=", tokenHash)
          .executeTakeFirst();
        if (!row) return undefined;
        return {
          token: { id: row.token_id, sessionId: row.id, createdAt: row.token_created_at, rotatedAt: row.rotated_at },
          session: toSession(row),
        };
      },
      async markRotated(tokenId, at) {
        const result = await db
          .updateTable("refresh_tokens")
          .set({ rotated_at: at })
          .where("id", "=", tokenId)
          .where("rotated_at", "is", null)
          .executeTakeFirst();
        return Number(result.numUpdatedRows) === 1;
      },
      async touchSession(sessionId, at) {
        await db.updateTable("auth_sessions").set({ last_seen_at: at }).where("id", "=", sessionId).execute();
      },
      async findSession(sessionId) {
        const row = await db.selectFrom("auth_sessions").selectAll().where("id", "=", sessionId).executeTakeFirst();
        return row && toSession(row);
      },
      async revokeSession(sessionId, reason, at) {
        const result = await db
          .updateTable("auth_sessions")
          .set({ revoked_at: at, revoke_reason: reason })
          .where("id", "=", sessionId)
          .where("revoked_at", "is", null)
          .executeTakeFirst();
        return Number(result.numUpdatedRows) === 1;
      },
      async revokeUserSessions(userId, reason, at, exceptSessionId) {
        let query = db
          .updateTable("auth_sessions")
          .set({ revoked_at: at, revoke_reason: reason })
          .where("user_id", "=", userId)
          .where("revoked_at", "is", null);
        if (exceptSessionId) query = query.where("id", "!=", exceptSessionId);
        const result = await query.executeTakeFirst();
        return Number(result.numUpdatedRows);
      },
      async listActiveSessions(userId, now) {
        const rows = await db
          .selectFrom("auth_sessions")
          .selectAll()
          .where("user_id", "=", userId)
          .where("revoked_at", "is", null)
          .where("expires_at", ">", now)
          .orderBy("created_at", "desc")
          .execute();
        return rows.map(toSession);
      },
    },
    apiKeys: {
      async create(key) {
        await db
          .insertInto("api_keys")
          .values({
            id: key.id,
            prefix: key.prefix,
            secret_hash: key.secretHash,
            user_id: key.userId,
            team_id: key.teamId,
            name: key.name,
            scopes: key.scopes.join(" "),
            created_at: key.createdAt,
            expires_at: key.expiresAt,
          })
          .execute();
      },
      async findForVerification(prefix) {
        const row = await db
          .selectFrom("api_keys as k")
          // A membership newer than the key (the owner left and came back) does not revive it.
          .leftJoin("memberships as m", (join) =>
            join.onRef("m.team_id", "=", "k.team_id").onRef("m.user_id", "=", "k.user_id").onRef("m.created_at", "<=", "k.created_at"),
          )
          .selectAll("k")
          .select("m.role as owner_role")
          .where("k.prefix", "=", prefix)
          .executeTakeFirst();
        if (!row) return undefined;
        const { owner_role, ...key } = row;
        return { key: toApiKey(key), ownerRole: parseRole(owner_role) };
      },
      async findById(id) {
        const row = await db.selectFrom("api_keys").selectAll().where("id", "=", id).executeTakeFirst();
        return row && toApiKey(row);
      },
      async list(teamId, userId) {
        let query = db.selectFrom("api_keys").selectAll().where("team_id", "=", teamId).where("revoked_at", "is", null);
        if (userId) query = query.where("user_id", "=", userId);
        return (await query.orderBy("created_at", "desc").execute()).map(toApiKey);
      },
      async revoke(id, at) {
        const result = await db
          .updateTable("api_keys")
          .set({ revoked_at: at })
          .where("id", "=", id)
          .where("revoked_at", "is", null)
          .executeTakeFirst();
        return Number(result.numUpdatedRows) === 1;
      },
      async revokeUserKeys(userId, at, teamId) {
        let query = db.updateTable("api_keys").set({ revoked_at: at }).where("user_id", "=", userId).where("revoked_at", "is", null);
        if (teamId) query = query.where("team_id", "=", teamId);
        const result = await query.executeTakeFirst();
        return Number(result.numUpdatedRows);
      },
      async touch(id, at) {
        await db.updateTable("api_keys").set({ last_used_at: at }).where("id", "=", id).execute();
      },
    },
    mfa: {
      async addFactor(factor, at) {
        try {
          await db
            .insertInto("mfa_factors")
            .values({
              id: factor.id,
              user_id: factor.userId,
              kind: factor.kind,
              label: factor.label,
              secret: factor.secret,
              secret_key_id: factor.secretKeyId,
              phone: factor.phone,
              credential_id: factor.credentialId,
              public_key: factor.publicKey,
              counter: factor.counter,
              transports: factor.transports.length ? factor.transports.join(" ") : null,
              last_used_step: factor.lastUsedStep,
              confirmed_at: factor.confirmedAt,
              created_at: at,
            })
            .execute();
        } catch (error) {
          if (isUniqueViolation(error)) throw new DuplicateError("Credential already registered");
          throw error;
        }
      },
      async factors(userId) {
        const rows = await db.selectFrom("mfa_factors").selectAll().where("user_id", "=", userId).orderBy("created_at").execute();
        return rows.map(toFactor);
      },
      async findFactor(id) {
        const row = await db.selectFrom("mfa_factors").selectAll().where("id", "=", id).executeTakeFirst();
        return row && toFactor(row);
      },
      async findByCredentialId(credentialId) {
        const row = await db.selectFrom("mfa_factors").selectAll().where("credential_id", "=", credentialId).executeTakeFirst();
        return row && toFactor(row);
      },
      async confirmFactor(id, at) {
        await db.updateTable("mfa_factors").set({ confirmed_at: at }).where("id", "=", id).execute();
      },
      async deleteFactor(id) {
        const result = await db.deleteFrom("mfa_factors").where("id", "=", id).executeTakeFirst();
        return Number(result.numDeletedRows) === 1;
      },
      async advanceTotpStep(id, step) {
        const result = await db
          .updateTable("mfa_factors")
          .set({ last_used_step: step })
          .where("id", "=", id)
          .where("last_used_step", "<", step)
          .executeTakeFirst();
        return Number(result.numUpdatedRows) === 1;
      },
      async resealSecret(id, expected, next) {
        const result = await db
          .updateTable("mfa_factors")
          .set({ secret: next.secret, secret_key_id: next.keyId })
          .where("id", "=", id)
          .where("secret", "=", expected.secret)
          .where((eb) => (expected.keyId === null ? eb("secret_key_id", "is", null) : eb("secret_key_id", "=", expected.keyId)))
          .executeTakeFirst();
        return Number(result.numUpdatedRows) === 1;
      },
      async updateCounter(id, counter) {
        const result = await db
          .updateTable("mfa_factors")
          .set({ counter })
          .where("id", "=", id)
          .where((eb) => eb.or([eb("counter", "<", counter), eb("counter", "=", 0)]))
          .executeTakeFirst();
        return Number(result.numUpdatedRows) === 1;
      },
      async replaceRecoveryCodes(userId, codeHashes, at) {
        const replace = async (inner: Db) => {
          await inner.deleteFrom("recovery_codes").where("user_id", "=", userId).execute();
          if (codeHashes.length) {
            await inner
              .insertInto("recovery_codes")
              .values(codeHashes.map((hash) => ({ id: randomUUID(), user_id: userId, code_hash: hash, created_at: at })))
              .execute();
          }
        };
        // Old codes must never survive next to new ones, so delete and insert together.
        if (inTransaction) await replace(db);
        else await db.transaction().execute((trx) => replace(trx));
      },
      async consumeRecoveryCode(userId, codeHash, at) {
        const result = await db
          .updateTable("recovery_codes")
          .set({ used_at: at })
          .where("user_id", "=", userId)
          .where("code_hash", "=", codeHash)
          .where("used_at", "is", null)
          .executeTakeFirst();
        return Number(result.numUpdatedRows) >= 1;
      },
      async remainingRecoveryCodes(userId) {
        const row = await db
          .selectFrom("recovery_codes")
          .select((eb) => eb.fn.countAll<string | number>().as("n"))
          .where("user_id", "=", userId)
          .where("used_at", "is", null)
          .executeTakeFirstOrThrow();
        return Number(row.n);
      },
    },
    oauthAccounts: {
      async find(provider, subject) {
        const row = await db
          .selectFrom("oauth_accounts")
          .select("user_id")
          .where("provider", "=", provider)
          .where("subject", "=", subject)
          .executeTakeFirst();
        return row && { userId: row.user_id };
      },
      async link(account, at) {
        await db
          .insertInto("oauth_accounts")
          .values({ provider: account.provider, subject: account.subject, user_id: account.userId, email: account.email, created_at: at })
          .execute();
      },
    },
    loginAttempts: {
      async get(key) {
        const row = await db.selectFrom("login_attempts").selectAll().where("key", "=", key).executeTakeFirst();
        return row && { failures: row.failures, lockedUntil: row.locked_until };
      },
      async claim(key, at, policy) {
        return atomically(async (inner) => {
          // One statement inserts the row or locks the one there: the row lock serialises
          // concurrent claims of one key (each sees the others' counts), and a row deleted
          // between a separate insert and select (a successful login clearing it, an erasure)
          // cannot leave the claim without one.
          const row = await inner
            .insertInto("login_attempts")
            .values({ key, failures: 0, last_failure_at: at })
            .onConflict((oc) => oc.column("key").doUpdateSet({ key: (eb) => eb.ref("excluded.key") }))
            .returningAll()
            .executeTakeFirstOrThrow();
          if (row.locked_until && row.locked_until.getTime() > at.getTime()) return { allowed: false as const, lockedUntil: row.locked_until };
          const failures = row.last_failure_at.getTime() < policy.resetBefore.getTime() ? 1 : row.failures + 1;
          const lockout = policy.lockoutMs(failures);
          await inner
            .updateTable("login_attempts")
            .set({ failures, last_failure_at: at, locked_until: lockout > 0 ? new Date(at.getTime() + lockout) : null })
            .where("key", "=", key)
            .execute();
          return { allowed: true as const, failures };
        });
      },
      async release(key, threshold) {
        // Back to no failures: no row, so successful logins leave no trace of their address.
        await db.deleteFrom("login_attempts").where("key", "=", key).where("failures", "<=", 1).execute();
        await db
          .updateTable("login_attempts")
          .set((eb) => ({
            failures: sql<number>`greatest(${eb.ref("failures")} - 1, 0)`,
            locked_until: eb.case().when("failures", "<=", threshold).then(null).else(eb.ref("locked_until")).end(),
          }))
          .where("key", "=", key)
          .execute();
      },
      async clear(key) {
        await db.deleteFrom("login_attempts").where("key", "=", key).execute();
      },
    },
    flows: {
      async put(flow, at) {
        await db
          .insertInto("auth_flows")
          .values({
            id: flow.id,
            kind: flow.kind,
            user_id: flow.userId,
            data: JSON.stringify(flow.data),
            attempts: flow.attempts,
            expires_at: flow.expiresAt,
            created_at: at,
          })
          .execute();
      },
      async peek(id, kind, now) {
        const row = await db
          .selectFrom("auth_flows")
          .selectAll()
          .where("id", "=", id)
          .where("kind", "=", kind)
          .where("expires_at", ">", now)
          .executeTakeFirst();
        return row && toFlow(row);
      },
      async take(id, kind, now) {
        const row = await db
          .deleteFrom("auth_flows")
          .where("id", "=", id)
          .where("kind", "=", kind)
          .returningAll()
          .executeTakeFirst();
        if (!row || row.expires_at.getTime() <= now.getTime()) return undefined;
        return toFlow(row);
      },
      async update(id, data) {
        await db.updateTable("auth_flows").set({ data: JSON.stringify(data) }).where("id", "=", id).execute();
      },
      async claimAttempt(id, kind, maxAttempts, now) {
        const row = await db
          .updateTable("auth_flows")
          .set((eb) => ({ attempts: eb("attempts", "+", 1) }))
          .where("id", "=", id)
          .where("kind", "=", kind)
          .where("expires_at", ">", now)
          .where("attempts", "<", maxAttempts)
          .returningAll()
          .executeTakeFirst();
        return row && toFlow(row);
      },
      async delete(id) {
        await db.deleteFrom("auth_flows").where("id", "=", id).execute();
      },
      async deleteForUser(userId) {
        const result = await db.deleteFrom("auth_flows").where("user_id", "=", userId).executeTakeFirst();
        return Number(result.numDeletedRows);
      },
    },
    counters: {
      async hit(key, windowStart, limit) {
        // One statement: a new window starts over at 1; a full one is left alone and returns no row.
        const row = await db
          .insertInto("auth_counters")
          .values({ key, window_start: windowStart, count: 1 })
          .onConflict((oc) =>
            oc
              .column("key")
              .doUpdateSet((eb) => ({
                count: eb.case().when("auth_counters.window_start", "=", windowStart).then(eb("auth_counters.count", "+", 1)).else(1).end(),
                window_start: windowStart,
              }))
              .where((eb) => eb.or([eb("auth_counters.window_start", "<>", windowStart), eb("auth_counters.count", "<", limit)])),
          )
          .returning("count")
          .executeTakeFirst();
        return row !== undefined && row.count <= limit;
      },
    },
    async transaction(work) {
      if (inTransaction) return work(stores);
      return db.transaction().execute((trx: Transaction<AuthTables>) => work(build(trx, true)));
    },
  };
  return stores;
}

function toUser(row: Row<"users">) {
  return {
    id: row.id,
    email: row.email,
    emailVerified: row.email_verified,
    passwordHash: row.password_hash,
    displayName: row.display_name,
    createdAt: row.created_at,
  };
}

function toFlow(row: Row<"auth_flows">): AuthFlowRecord {
  let data: Record<string, unknown> = {};
  try {
    data = JSON.parse(row.data) as Record<string, unknown>;
  } catch {
    // A corrupt row is treated as an empty flow; the caller's checks then fail closed.
  }
  return { id: row.id, kind: row.kind, userId: row.user_id, data, attempts: row.attempts, expiresAt: row.expires_at };
}
