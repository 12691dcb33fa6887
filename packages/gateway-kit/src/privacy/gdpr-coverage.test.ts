import { randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import Koa from "koa";
import { sql, type Kysely } from "kysely";
import { afterAll, beforeAll, expect, it } from "vitest";
import { auditRequests } from "../audit/audit-requests.js";
import { createAuditLog, verifyAuditChain, type AuditLog } from "../audit/audit-log.js";
import { auditMigrations } from "../audit/migrations.js";
import { authRouter } from "../auth/auth-router.js";
import { createAuthService } from "../auth/auth-service.js";
import { JwtKeySet } from "../auth/jwt.js";
import { createKyselyAuthStores } from "../auth/kysely-stores.js";
import { authMigrations } from "../auth/migrations.js";
import { PASSWORD, uniqueEmail } from "../auth/test-app.js";
import { billingDataRights } from "../billing/data-rights.js";
import { billingMigrations } from "../billing/migrations.js";
import { budgetsDataRights } from "../budgets/data-rights.js";
import { createKyselyBudgets } from "../budgets/kysely-budgets.js";
import { budgetMigrations } from "../budgets/migrations.js";
import { creditsDataRights } from "../credits/data-rights.js";
import { createKyselyLedger } from "../credits/kysely-ledger.js";
import { creditMigrations } from "../credits/migrations.js";
import { migrateToLatest } from "../db/migrations.js";
import { errorHandler } from "../http-error.js";
import { limitMigrations } from "../limits/migrations.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { auditDataRights } from "./audit-contributor.js";
import { authDataRights } from "./auth-contributor.js";
import { eraseUserData, exportUserData } from "./data-rights.js";
import { gatewayRetentionRules, purgeExpired } from "./retention.js";

const TABLES = ["users", "auth_sessions", "login_attempts", "audit_log", "rate_limit_buckets"];

async function dump(db: Kysely<any>): Promise<string> {
  const parts: string[] = [];
  for (const table of TABLES) {
    const rows = await sql<{ j: string }>`select row_to_json(t)::text as j from ${sql.table(table)} t`.execute(db);
    parts.push(...rows.rows.map((r) => `${table} ${r.j}`));
  }
  return parts.join("\n");
}

describeEachDatabase("data rights coverage", (fixture) => {
  let server: Server;
  let base: string;
  let audit: AuditLog;
  const db = () => fixture.database.db;
  const contributors = () => [authDataRights(), auditDataRights(), creditsDataRights, billingDataRights, budgetsDataRights];

  beforeAll(async () => {
    await migrateToLatest(db(), [authMigrations, auditMigrations, creditMigrations, billingMigrations, budgetMigrations, limitMigrations]);
    audit = createAuditLog(db());
    const keys = await JwtKeySet.generate({ algorithm: "EdDSA" });
    const service = createAuthService({
      stores: createKyselyAuthStores(db()),
      keys,
      issuer: "https://keen.test",
      audience: "keen-api",
      passwordHashing: { memoryCost: 1024, timeCost: 1 },
      audit,
    });
    const app = new Koa();
    app.proxy = true;
    app.use(async (ctx, next) => {
      ctx.state.requestId = ctx.get("x-request-id") || randomUUID();
      await next();
    });
    app.use(errorHandler());
    // The request log records every request, the unauthenticated signup and login included.
    app.use(auditRequests(audit));
    const router = authRouter({ service });
    app.use(router.routes()).use(router.allowedMethods());
    server = createServer(app.callback());
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((resolve) => server?.close(resolve)));

  const post = async (path: string, body: unknown, ip: string, requestId: string = randomUUID()) => {
    const res = await fetch(`${base}${path}`, { method: "POST", headers: { "content-type": "application/json", "x-forwarded-for": ip, "x-request-id": requestId }, body: JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as any, requestId };
  };

  /** A user who signed up from one address and logged in (once wrongly) from another, with a wallet, a checkout and a budget. */
  let subjects = 0;
  async function subject(tag: string) {
    const email = uniqueEmail(tag);
    // Each subject its own addresses: two sharing one would share their lockout and bucket rows.
    subjects += 1;
    const signupIp = `203.0.113.${20 + subjects}`;
    const loginIp = `198.51.100.${20 + subjects}`;
    const signed = await post("/auth/signup", { email, password: PASSWORD }, signupIp, `req-signup-${tag}`);
    expect(signed.status).toBe(201);
    const userId = signed.body.user.id as string;
    expect((await post("/auth/login", { email, password: "wrong password" }, loginIp)).status).toBe(401);
    expect((await post("/auth/login", { email, password: PASSWORD }, loginIp, `req-login-${tag}`)).status).toBe(200);
    const ledger = createKyselyLedger(db());
    const wallet = await ledger.openWallet({ userId });
    const sessionId = `cs_test_${randomUUID()}`;
    await db().insertInto("billing_checkouts").values({ session_id: sessionId, account_id: wallet.id, pack_id: "starter", credits: 10_000_000, amount_total: 1_000, currency: "usd", status: "open" }).execute();
    const budgets = createKyselyBudgets(db());
    await budgets.setBudget({ scope: { kind: "user", id: userId }, period: "monthly", limit: 5_000_000 });
    await budgets.record([{ kind: "user", id: userId }], 1_000, `charge-${userId}`);
    // Lockout counters and rate-limit buckets keyed by the addresses and the user.
    await db()
      .insertInto("login_attempts")
      .values([
        { key: `ip:${signupIp}`, failures: 2, locked_until: null, last_failure_at: new Date() },
        { key: `ip:${loginIp}`, failures: 1, locked_until: null, last_failure_at: new Date() },
      ])
      .onConflict((oc) => oc.column("key").doNothing())
      .execute();
    await db()
      .insertInto("rate_limit_buckets")
      .values([
        { key: `signup:ip:${signupIp}`, tokens: 3, updated_ms: Date.now(), allowed: true },
        { key: `login:ip:${loginIp}`, tokens: 3, updated_ms: Date.now(), allowed: true },
        { key: `api:user:${userId}`, tokens: 3, updated_ms: Date.now(), allowed: true },
      ])
      .execute();
    return { email, userId, signupIp, loginIp, sessionId, walletId: wallet.id };
  }

  it("exports billing checkouts, budgets and the user's own unauthenticated signup and login request rows", async () => {
    const s = await subject("export");
    const archive = JSON.parse(JSON.stringify(await exportUserData(db(), s.userId, contributors())));
    expect(archive.sections.billing.checkouts).toEqual([expect.objectContaining({ sessionId: s.sessionId, credits: "10000000", amountTotal: "1000", currency: "usd", status: "open" })]);
    expect(archive.sections.budgets.budgets).toEqual([expect.objectContaining({ period: "monthly", limit: "5000000" })]);
    expect(archive.sections.budgets.charges).toEqual([expect.objectContaining({ idempotencyKey: `charge-${s.userId}`, amount: "1000" })]);
    const rows = archive.sections.audit as { action: string; actorId: string | null; ip: string; requestId: string }[];
    // The request log's rows for the signup and login requests carry no actor, but are the user's.
    expect(rows).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ action: "POST /auth/signup", actorId: null, ip: s.signupIp, requestId: "req-signup-export" }),
        expect.objectContaining({ action: "POST /auth/login", actorId: null, ip: s.loginIp, requestId: "req-login-export" }),
        expect.objectContaining({ action: "auth.signup", actorId: s.userId }),
      ]),
    );
    // Another user's unauthenticated requests are not in it.
    const other = await subject("other");
    expect(JSON.stringify(archive)).not.toContain(other.signupIp);
  });

  it("leaves no audit row, lockout counter or rate-limit bucket with the user's addresses after erasure", async () => {
    const s = await subject("erase");
    const bystander = await subject("bystander");
    // The signup session has gone (e.g. by retention): its address is known only from the audit rows.
    await db().deleteFrom("auth_sessions").where("user_id", "=", s.userId).where("ip", "=", s.signupIp).execute();
    const before = await dump(db());
    for (const trace of [s.signupIp, s.loginIp, `api:user:${s.userId}`]) expect(before).toContain(trace);

    await eraseUserData(db(), s.userId, contributors());

    const after = await dump(db());
    for (const trace of [s.signupIp, s.loginIp, s.email, `api:user:${s.userId}`]) expect(after, trace).not.toContain(trace);
    for (const trace of [bystander.signupIp, bystander.loginIp, `api:user:${bystander.userId}`]) expect(after, trace).toContain(trace);
    expect(await db().selectFrom("login_attempts").select("key").where("key", "in", [`ip:${s.signupIp}`, `ip:${s.loginIp}`]).execute()).toEqual([]);
    expect(await db().selectFrom("budgets").select("id").where("scope_id", "=", s.userId).execute()).toEqual([]);
    // Financial records stay.
    expect(await db().selectFrom("billing_checkouts").select("session_id").where("session_id", "=", s.sessionId).execute()).toHaveLength(1);
    // Every chain still verifies, with the scrubs on record.
    const tenants = await db().selectFrom("audit_heads").select("tenant_key").execute();
    for (const { tenant_key } of tenants) {
      expect(await verifyAuditChain(db(), tenant_key === "" ? null : tenant_key), tenant_key).toMatchObject({ ok: true });
    }
  });

  it("purges by retention what the docs promise: idled-out sessions' IPs, buckets, anomaly state, run slots, budget records, Stripe events, abandoned checkouts", async () => {
    const now = new Date();
    const daysAgo = (d: number) => new Date(now.getTime() - d * 86_400_000);
    const s = await subject("retention");
    // A session that idled out 40 days ago: never revoked, its absolute expiry still ahead.
    await db().insertInto("auth_sessions").values({ id: `s_idle_${fixture.kind}`, user_id: s.userId, created_at: daysAgo(60), last_seen_at: daysAgo(40), expires_at: daysAgo(-20), ip: "192.0.2.77" }).execute();
    await db().insertInto("rate_limit_buckets").values({ key: "old:ip:192.0.2.78", tokens: 1, updated_ms: daysAgo(3).getTime(), allowed: true }).execute();
    await db().insertInto("anomaly_states").values([
      { subject: "requests:user:gone", state: JSON.stringify({ bucketStart: daysAgo(120).getTime(), current: 1, mean: 1, variance: 0, buckets: 3, flagged: false }) },
      { subject: "requests:user:active", state: JSON.stringify({ bucketStart: daysAgo(1).getTime(), current: 1, mean: 1, variance: 0, buckets: 3, flagged: false }) },
    ]).execute();
    await db().insertInto("run_slots").values({ run_id: "r_old", scope_key: "user:gone", acquired_at: daysAgo(5), lease_expires_at: daysAgo(4) }).execute();
    await db().insertInto("budget_charges").values({ idempotency_key: `old-charge-${fixture.kind}`, amount_micros: 5, scopes: "[]", mode: "record", created_at: daysAgo(500) }).execute();
    await db().insertInto("stripe_events").values({ id: `evt_old_${fixture.kind}`, type: "customer.created", stripe_created_at: daysAgo(200), outcome: "ignored", received_at: daysAgo(200) }).execute();
    await db().insertInto("billing_checkouts").values({ session_id: `cs_abandoned_${fixture.kind}`, account_id: s.walletId, pack_id: "starter", credits: 1, amount_total: 1, currency: "usd", status: "expired", created_at: daysAgo(100) }).execute();

    const report = await purgeExpired(db(), gatewayRetentionRules(), { now: () => now });
    expect(report).toMatchObject({ rate_limit_buckets: expect.any(Number), anomaly_states: 1, run_slots: 1, stripe_events: 1, abandoned_checkouts: 1 });
    expect(report.budget_records).toBeGreaterThanOrEqual(1);
    expect(await db().selectFrom("auth_sessions").select("id").where("id", "=", `s_idle_${fixture.kind}`).execute()).toEqual([]);
    expect(await dump(db())).not.toContain("192.0.2.77");
    expect(await db().selectFrom("rate_limit_buckets").select("key").where("key", "=", "old:ip:192.0.2.78").execute()).toEqual([]);
    expect((await db().selectFrom("anomaly_states").select("subject").execute()).map((r) => r.subject)).toEqual(["requests:user:active"]);
    // The user's live session, recent buckets and the open checkout stay.
    expect(await db().selectFrom("auth_sessions").select("id").where("user_id", "=", s.userId).execute()).not.toEqual([]);
    expect(await db().selectFrom("billing_checkouts").select("session_id").where("session_id", "=", s.sessionId).execute()).toHaveLength(1);
  });
});
