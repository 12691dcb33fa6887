import { createHash } from "node:crypto";
import type { Kysely } from "kysely";
import type { DataRightsContributor } from "./contributor.js";
import { eraseIpTraces, tableExists, userIpAddresses } from "./ip-traces.js";

const sha256 = (value: string) => createHash("sha256").update(value, "utf8").digest("hex");
/** How the auth service keys a phone number's SMS counter (a SHA-256 hex digest, never the number). */
const phoneCounterKey = (phone: string) => `sms:phone:${sha256(phone)}`;
/** How the auth service keys an address's verification-email counter (a digest, never the address). */
const addressCounterKey = (email: string) => `email_verification:address:${sha256(email)}`;

/** The address an erased user's `users.email` becomes: unique, undeliverable (RFC 2606 `.invalid`). */
export const erasedEmail = (userId: string) => `erased-${userId}@erased.invalid`;

/**
 * The auth tables' part in data rights (`authMigrations`).
 *
 * Export: the profile, memberships, sessions (with ip and user agent), API keys (never their
 * hashes), MFA factors (never their secrets), recovery-code counts, OAuth links and the login
 * lockout counters kept under the user's email.
 *
 * Erasure: the `users` row stays, so ledger entries and memberships of others keep a valid
 * reference, but its email becomes `erased-<id>@erased.invalid` and its name and password hash are
 * cleared; sessions (and their refresh tokens), API keys, MFA factors, recovery codes, OAuth
 * links, pending auth flows (verification tokens among them) and memberships are deleted, and so
 * are the SMS and verification-email counters of the user, their phones and their address, the
 * lockout counters for the user's email and for every address recorded for them (sessions and audit rows), the rate-limit
 * buckets keyed by those addresses or the user id, and the personal fields of audit rows recorded
 * from those addresses (see `eraseIpTraces`); personal teams named after the user are renamed
 * "Personal".
 *
 * @example
 * await eraseUserData(db, userId, [authDataRights(), auditDataRights()]);
 */
export function authDataRights(options: { now?: () => Date } = {}): DataRightsContributor {
  const now = options.now ?? (() => new Date());
  return {
    name: "auth",
    async export(db: Kysely<any>, userId: string) {
      const user = await db.selectFrom("users").selectAll().where("id", "=", userId).executeTakeFirst();
      if (!user) return null;
      const [memberships, sessions, apiKeys, factors, codes, oauth, attempts] = await Promise.all([
        db
          .selectFrom("memberships")
          .innerJoin("teams", "teams.id", "memberships.team_id")
          .select(["memberships.team_id as teamId", "teams.name as teamName", "teams.personal", "memberships.role", "memberships.created_at as createdAt"])
          .where("memberships.user_id", "=", userId)
          .orderBy("memberships.created_at")
          .execute(),
        db
          .selectFrom("auth_sessions")
          .select(["id", "team_id as teamId", "created_at as createdAt", "last_seen_at as lastSeenAt", "expires_at as expiresAt", "revoked_at as revokedAt", "revoke_reason as revokeReason", "user_agent as userAgent", "ip"])
          .where("user_id", "=", userId)
          .orderBy("created_at")
          .execute(),
        db
          .selectFrom("api_keys")
          .select(["id", "prefix", "name", "scopes", "team_id as teamId", "created_at as createdAt", "expires_at as expiresAt", "revoked_at as revokedAt", "last_used_at as lastUsedAt"])
          .where("user_id", "=", userId)
          .orderBy("created_at")
          .execute(),
        db
          .selectFrom("mfa_factors")
          .select(["id", "kind", "label", "phone", "credential_id as credentialId", "transports", "confirmed_at as confirmedAt", "created_at as createdAt"])
          .where("user_id", "=", userId)
          .orderBy("created_at")
          .execute(),
        db.selectFrom("recovery_codes").select(["used_at"]).where("user_id", "=", userId).execute(),
        db.selectFrom("oauth_accounts").select(["provider", "subject", "email", "created_at as createdAt"]).where("user_id", "=", userId).execute(),
        db.selectFrom("login_attempts").select(["key", "failures", "locked_until as lockedUntil", "last_failure_at as lastFailureAt"]).where("key", "=", `account:${user.email}`).execute(),
      ]);
      return {
        user: {
          id: user.id,
          email: user.email,
          emailVerified: user.email_verified,
          displayName: user.display_name,
          hasPassword: user.password_hash !== null,
          createdAt: user.created_at,
          passwordChangedAt: user.password_changed_at,
        },
        memberships,
        sessions,
        apiKeys: apiKeys.map((k) => ({ ...k, scopes: String(k.scopes).split(" ").filter(Boolean) })),
        mfaFactors: factors,
        recoveryCodes: { total: codes.length, used: codes.filter((c) => c.used_at !== null).length },
        oauthAccounts: oauth,
        loginAttempts: attempts,
      };
    },
    async erase(db: Kysely<any>, userId: string) {
      const user = await db.selectFrom("users").select(["email"]).where("id", "=", userId).forUpdate().executeTakeFirst();
      if (!user) return;
      // Addresses from sessions and from audit rows (signup and login IPs outlive their sessions).
      const ips = await userIpAddresses(db, userId);
      const oauthEmails = await db.selectFrom("oauth_accounts").select("email").where("user_id", "=", userId).where("email", "is not", null).execute();
      const lockoutKeys = [`account:${user.email}`, ...oauthEmails.map((r) => `account:${r.email}`)];
      await db.deleteFrom("login_attempts").where("key", "in", lockoutKeys).execute();
      await eraseIpTraces(db, userId, ips, now());
      if (await tableExists(db, "auth_counters")) {
        // SMS and verification-email caps count per user and per (hashed) phone number or
        // address: all of them are the user's.
        const phones = await db.selectFrom("mfa_factors").select("phone").where("user_id", "=", userId).where("phone", "is not", null).execute();
        const counterKeys = [
          `sms:user:${userId}`,
          ...phones.map((r) => phoneCounterKey(r.phone as string)),
          `email_verification:user:${userId}`,
          addressCounterKey(user.email),
        ];
        await db.deleteFrom("auth_counters").where("key", "in", counterKeys).execute();
      }
      await db.deleteFrom("auth_flows").where("user_id", "=", userId).execute();
      await db.deleteFrom("oauth_accounts").where("user_id", "=", userId).execute();
      await db.deleteFrom("mfa_factors").where("user_id", "=", userId).execute();
      await db.deleteFrom("recovery_codes").where("user_id", "=", userId).execute();
      await db.deleteFrom("api_keys").where("user_id", "=", userId).execute();
      await db.deleteFrom("auth_sessions").where("user_id", "=", userId).execute();
      const personal = await db
        .selectFrom("memberships")
        .innerJoin("teams", "teams.id", "memberships.team_id")
        .select("teams.id")
        .where("memberships.user_id", "=", userId)
        .where("teams.personal", "=", true)
        .execute();
      if (personal.length) await db.updateTable("teams").set({ name: "Personal" }).where("id", "in", personal.map((t) => t.id)).execute();
      await db.deleteFrom("memberships").where("user_id", "=", userId).execute();
      await db
        .updateTable("users")
        .set({ email: erasedEmail(userId), email_verified: false, password_hash: null, display_name: null, password_changed_at: null })
        .where("id", "=", userId)
        .execute();
    },
  };
}
