import { sql, type Kysely } from "kysely";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createAuditLog, verifyAuditChain, type AuditLog } from "../audit/audit-log.js";
import { auditMigrations } from "../audit/migrations.js";
import { defineMigrations, migrateToLatest } from "../db/migrations.js";
import { authMigrations } from "../auth/migrations.js";
import { PASSWORD, signup, startTestApp, uniqueEmail, type TestApp } from "../auth/test-app.js";
import { totpCode } from "../auth/totp.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { auditDataRights } from "./audit-contributor.js";
import { authDataRights, erasedEmail } from "./auth-contributor.js";
import type { DataRightsContributor } from "./contributor.js";
import { DataRightsConfigError, eraseUserData, exportUserData } from "./data-rights.js";
import { gatewayRetentionRules, purgeExpired } from "./retention.js";

const TABLES = ["users", "teams", "memberships", "auth_sessions", "refresh_tokens", "api_keys", "mfa_factors", "recovery_codes", "oauth_accounts", "login_attempts", "auth_flows", "audit_log", "audit_heads", "wallet_entries"];

/** Every row of every table as JSON text, to search for leftovers. */
async function dump(db: Kysely<any>): Promise<string> {
  const parts: string[] = [];
  for (const table of TABLES) {
    const rows = await sql<{ j: string }>`select row_to_json(t)::text as j from ${sql.table(table)} t`.execute(db);
    parts.push(...rows.rows.map((r) => `${table} ${r.j}`));
  }
  return parts.join("\n");
}

/** A stand-in for a ledger module's contributor: it exports the balance and keeps every amount on erasure. */
const wallet: DataRightsContributor = {
  name: "wallet",
  export: async (db, userId) => ({ balance: Number((await db.selectFrom("wallet_entries").select((eb) => eb.fn.sum<string>("amount").as("sum")).where("user_id", "=", userId).executeTakeFirst())?.sum ?? 0) }),
  erase: async (db, userId) => void (await db.updateTable("wallet_entries").set({ memo: null }).where("user_id", "=", userId).execute()),
};

describeEachDatabase("privacy", (fixture) => {
  let app: TestApp;
  let audit: AuditLog;
  const contributors = () => [authDataRights(), auditDataRights(), wallet];

  beforeAll(async () => {
    await migrateToLatest(fixture.database.db, [
      authMigrations,
      auditMigrations,
      defineMigrations("zz_test", {
        zz_test_0002_wallet: {
          up: async (db) => {
            await db.schema
              .createTable("wallet_entries")
              .addColumn("id", "serial", (c) => c.primaryKey())
              .addColumn("user_id", "text", (c) => c.notNull().references("users.id"))
              .addColumn("amount", "bigint", (c) => c.notNull())
              .addColumn("memo", "text")
              .execute();
          },
        },
      }),
    ]);
    audit = createAuditLog(fixture.database.db);
    app = await startTestApp(fixture, { audit });
  });
  afterAll(() => app?.close());

  /** A user with a bit of everything: sessions from an IP, a failed login, an API key, TOTP with recovery codes, a pending SMS factor, an OAuth link, wallet entries. */
  async function richUser(ip: string) {
    const email = uniqueEmail("subject");
    const displayName = `Ada Lovelace ${ip.split(".").at(-1)}`;
    const res = await app.request("POST", "/auth/signup", { body: { email, password: PASSWORD, displayName }, headers: { "x-forwarded-for": ip } });
    expect(res.status).toBe(201);
    const { user, accessToken, teamId } = res.body as { user: { id: string }; accessToken: string; teamId: string };
    const login = await app.request("POST", "/auth/login", { body: { email, password: PASSWORD }, headers: { "x-forwarded-for": ip, "user-agent": `${displayName}'s laptop` } });
    expect(login.status).toBe(200);
    expect((await app.request("POST", "/auth/login", { body: { email, password: "wrong password" }, headers: { "x-forwarded-for": ip } })).status).toBe(401);
    const key = await app.request("POST", "/auth/api-keys", { token: accessToken, body: { name: "ci", scopes: ["sessions:read"], password: PASSWORD }, headers: { "x-forwarded-for": ip } });
    expect(key.status).toBe(201);
    const totp = await app.request("POST", "/auth/mfa/totp", { token: accessToken, body: { label: "phone", password: PASSWORD } });
    const { factorId, secret } = totp.body as { factorId: string; secret: string };
    const confirmed = await app.request("POST", "/auth/mfa/totp/verify", { token: accessToken, body: { factorId, code: totpCode(secret, app.clock.now()) }, headers: { "x-forwarded-for": ip } });
    expect(confirmed.status).toBe(200);
    expect((await app.request("POST", "/auth/mfa/sms", { token: accessToken, body: { password: PASSWORD, phone: `+4477009001${ip.split(".").at(-1)}` } })).status).toBe(201);
    const { db } = fixture.database;
    await db.insertInto("oauth_accounts").values({ provider: "github", subject: `gh-${user.id}`, user_id: user.id, email: `ada-${user.id}@users.noreply.example` }).execute();
    await db.insertInto("wallet_entries").values([{ user_id: user.id, amount: 5_000_000, memo: `top-up by ${email}` }, { user_id: user.id, amount: -1_250_000, memo: "run" }]).execute();
    return { email, displayName, userId: user.id, teamId, key: (key.body as { key: string }).key };
  }

  it("exports everything the contributors hold as one JSON archive", async () => {
    const { email, userId, teamId, displayName } = await richUser("198.51.100.21");
    const archive = await exportUserData(fixture.database.db, userId, contributors());
    const json = JSON.parse(JSON.stringify(archive));
    expect(json).toMatchObject({ format: "keen.user-data/1", userId });
    const auth = json.sections.auth;
    expect(auth.user).toMatchObject({ id: userId, email, displayName, hasPassword: true });
    expect(auth.memberships).toEqual([expect.objectContaining({ teamId, teamName: `${displayName}'s workspace`, role: "owner", personal: true })]);
    expect(auth.sessions.length).toBe(2);
    expect(auth.sessions.map((s: { ip: string }) => s.ip)).toEqual(["198.51.100.21", "198.51.100.21"]);
    expect(auth.apiKeys).toEqual([expect.objectContaining({ name: "ci", scopes: ["sessions:read"] })]);
    expect(auth.mfaFactors.map((f: { kind: string }) => f.kind).sort()).toEqual(["sms", "totp"]);
    expect(auth.recoveryCodes.total).toBeGreaterThan(0);
    expect(auth.oauthAccounts).toEqual([expect.objectContaining({ provider: "github" })]);
    expect(auth.loginAttempts).toEqual([expect.objectContaining({ key: `account:${email}`, failures: 1 })]);
    // No credential material in the archive.
    const text = JSON.stringify(json);
    expect(text).not.toMatch(/password_hash|secret_hash|token_hash|\$argon2/);
    expect(json.sections.audit.map((e: { action: string }) => e.action)).toEqual(expect.arrayContaining(["auth.signup", "auth.login", "api_key.create", "mfa.enrol"]));
    expect(json.sections.audit.every((e: { actorId: string | null; target: string | null }) => e.actorId === userId || e.target === `user:${userId}`)).toBe(true);
    expect(json.sections.wallet).toEqual({ balance: 3_750_000 });
  });

  it("erases personal data in one transaction, keeps totals and keeps the audit chain verifiable", async () => {
    const subject = await richUser("198.51.100.33");
    const bystander = await signup(app, uniqueEmail("bystander"));
    const { db } = fixture.database;
    const before = await dump(db);
    expect(before).toContain(subject.email);
    expect(before).toContain("198.51.100.33");

    const report = await eraseUserData(db, subject.userId, contributors(), { recordIn: { tenantId: subject.teamId, actorId: subject.userId, requestId: "req-erase" } });
    expect(report).toMatchObject({ userId: subject.userId, contributors: ["auth", "audit", "wallet"] });
    const trail = (await audit.list(subject.teamId, { limit: 1000 })).at(-1)!;
    expect(trail).toMatchObject({ action: "privacy.erase", target: `user:${subject.userId}`, actorId: null, ip: null, requestId: "req-erase", details: { contributors: ["auth", "audit", "wallet"] } });

    const after = await dump(db);
    for (const leftover of [subject.email, "198.51.100.33", subject.displayName, `${subject.displayName}'s laptop`, "+447700900133", `ada-${subject.userId}@users.noreply.example`, subject.key.slice(5, 17)]) {
      expect(after, `${leftover} should be gone`).not.toContain(leftover);
    }
    // The user row stays (others may reference it), anonymised; the bystander is untouched.
    const users = await db.selectFrom("users").select(["id", "email", "password_hash", "display_name"]).where("id", "in", [subject.userId, bystander.user.id]).execute();
    expect(users.find((u) => u.id === subject.userId)).toEqual({ id: subject.userId, email: erasedEmail(subject.userId), password_hash: null, display_name: null });
    expect(users.find((u) => u.id === bystander.user.id)?.email).toBe(bystander.email);
    expect(after).toContain(bystander.email);
    // Totals kept.
    expect(await wallet.export(db, subject.userId)).toEqual({ balance: 3_750_000 });
    // The chains the user appeared in still verify, and the erased rows are marked.
    expect(await verifyAuditChain(db, subject.teamId)).toMatchObject({ ok: true });
    expect(await verifyAuditChain(db, null)).toMatchObject({ ok: true });
    const scrubbed = await db.selectFrom("audit_log").select(["action", "scrubbed_at"]).where("tenant_key", "=", subject.teamId).execute();
    expect(scrubbed.length).toBeGreaterThan(3);
    expect(scrubbed.filter((r) => r.action !== "privacy.erase" && r.action !== "audit.scrub").every((r) => r.scrubbed_at !== null)).toBe(true);
    expect(scrubbed.some((r) => r.action === "audit.scrub")).toBe(true);
    // The account is unusable and its sessions are gone.
    expect((await app.request("POST", "/auth/login", { body: { email: subject.email, password: PASSWORD } })).status).toBe(401);
    expect((await app.request("GET", "/v1/sessions", { headers: { authorization: `Bearer ${subject.key}` } })).status).toBe(401);
    // Erasing twice is harmless.
    await eraseUserData(db, subject.userId, contributors());
    expect(await verifyAuditChain(db, subject.teamId)).toMatchObject({ ok: true });
  });

  it("rolls everything back when one contributor fails", async () => {
    const subject = await richUser("198.51.100.44");
    const { db } = fixture.database;
    const broken: DataRightsContributor = { name: "broken", export: async () => null, erase: async () => Promise.reject(new Error("disk on fire")) };
    await expect(eraseUserData(db, subject.userId, [authDataRights(), auditDataRights(), broken])).rejects.toThrow("disk on fire");
    const user = await db.selectFrom("users").select("email").where("id", "=", subject.userId).executeTakeFirstOrThrow();
    expect(user.email).toBe(subject.email);
    expect(await dump(db)).toContain("198.51.100.44");
    const intact = await db.selectFrom("audit_log").select("scrubbed_at").where("actor_id", "=", subject.userId).execute();
    expect(intact.length).toBeGreaterThan(0);
  });

  it("checks its arguments", async () => {
    const { db } = fixture.database;
    await expect(exportUserData(db, "u", [])).rejects.toBeInstanceOf(DataRightsConfigError);
    await expect(exportUserData(db, "u", [authDataRights(), authDataRights()])).rejects.toThrow(/Two contributors/);
    await expect(eraseUserData(db, "", [authDataRights()])).rejects.toThrow(/userId/);
    expect((await exportUserData(db, "no-such-user", [authDataRights(), auditDataRights()])).sections).toEqual({ auth: null, audit: [] });
  });

  it("purges by retention with a controlled clock", async () => {
    const { db } = fixture.database;
    // Real time, so the sessions other tests opened (valid for days) are not due yet.
    const now = new Date(Math.floor(Date.now() / 1000) * 1000);
    const daysAgo = (d: number) => new Date(now.getTime() - d * 86_400_000);
    const tenant = `team_retention_${fixture.kind}`;
    let at = daysAgo(400);
    const old = createAuditLog(db, { now: () => at });
    await old.record({ tenantId: tenant, actorId: "u_old", action: "auth.login", result: "success", ip: "203.0.113.200", details: { via: "password" } });
    at = daysAgo(366);
    await old.record({ tenantId: tenant, actorId: "u_old", action: "auth.logout", result: "success", ip: "203.0.113.200" });
    at = daysAgo(10);
    await old.record({ tenantId: tenant, actorId: "u_new", action: "auth.login", result: "success", ip: "203.0.113.201" });

    const owner = await signup(app, uniqueEmail("retention"));
    await db
      .insertInto("auth_sessions")
      .values([
        { id: "s_expired_long_ago", user_id: owner.user.id, created_at: daysAgo(90), last_seen_at: daysAgo(60), expires_at: daysAgo(31) },
        { id: "s_revoked_recently", user_id: owner.user.id, created_at: daysAgo(20), last_seen_at: daysAgo(5), expires_at: daysAgo(-10), revoked_at: daysAgo(5) },
        { id: "s_revoked_long_ago", user_id: owner.user.id, created_at: daysAgo(300), last_seen_at: daysAgo(200), expires_at: daysAgo(-10), revoked_at: daysAgo(45) },
      ])
      .execute();
    await db
      .insertInto("login_attempts")
      .values([
        { key: "ip:203.0.113.250", failures: 3, locked_until: null, last_failure_at: daysAgo(31) },
        { key: "ip:203.0.113.251", failures: 3, locked_until: null, last_failure_at: daysAgo(2) },
      ])
      .execute();
    await db.insertInto("auth_flows").values([{ id: "f_old", kind: "mfa", user_id: null, data: "{}", expires_at: daysAgo(3) }]).execute();

    const rules = gatewayRetentionRules({ sessions: 30 });
    const report = await purgeExpired(db, rules, { now: () => now });
    expect(report.audit_details).toBeGreaterThanOrEqual(2);
    expect(report.auth_sessions).toBe(2);
    expect(report.login_attempts).toBe(1);
    expect(report.auth_flows).toBeGreaterThanOrEqual(1);
    const rows = await db.selectFrom("audit_log").select(["action", "ip", "scrubbed_at"]).where("tenant_key", "=", tenant).orderBy("seq").execute();
    expect(rows.map((r) => [r.action, r.ip])).toEqual([["auth.login", null], ["auth.logout", null], ["auth.login", "203.0.113.201"], ["audit.scrub", null]]);
    expect(await verifyAuditChain(db, tenant)).toMatchObject({ ok: true, rows: 4, scrubs: { records: 1, rows: 2 } });
    const sessions = await db.selectFrom("auth_sessions").select("id").where("id", "like", "s_%").execute();
    expect(sessions.map((s) => s.id)).toEqual(["s_revoked_recently"]);
    expect((await purgeExpired(db, rules, { now: () => now })).auth_sessions).toBe(0);
    expect(() => gatewayRetentionRules({ sessions: 0 })).toThrow(/Invalid retention settings/);
    expect(() => gatewayRetentionRules({ session: 3 } as never)).toThrow(/Invalid retention settings/);
  });
});
