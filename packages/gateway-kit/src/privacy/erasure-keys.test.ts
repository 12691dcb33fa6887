// What erasure and retention must find: lockout counters keyed the way the limiter keys them
// (an IPv6 client by its /64), and the SMS counters of a user and of their phone numbers.
import { beforeAll, expect, it } from "vitest";
import { auditMigrations } from "../audit/migrations.js";
import { sha256Hex } from "../auth/secrets.js";
import { migrateForTests, PASSWORD, startTestApp, uniqueEmail, type TestApp } from "../auth/test-app.js";
import { migrateToLatest } from "../db/migrations.js";
import { ipLimitKey } from "../http/client-ip.js";
import { limitMigrations } from "../limits/migrations.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { createMemoryMailer } from "../testing/memory-mailer.js";
import { auditDataRights } from "./audit-contributor.js";
import { authDataRights } from "./auth-contributor.js";
import { eraseUserData } from "./data-rights.js";
import { gatewayRetentionRules, purgeExpired } from "./retention.js";

describeEachDatabase("erasure and retention of auth counters", (fixture) => {
  let app: TestApp;
  beforeAll(async () => {
    await migrateForTests(fixture);
    await migrateToLatest(fixture.database.db, [auditMigrations]);
    app = await startTestApp(fixture, { emailVerification: { mailer: createMemoryMailer() } });
  });

  const keys = async (table: "login_attempts" | "auth_counters") =>
    (await fixture.database.db.selectFrom(table).select("key").execute()).map((r) => r.key as string);

  it("erases the /64 lockout counter of an IPv6 client and the user's SMS counters", async () => {
    const ip = "2001:db8:77:1:aaaa:bbbb:cccc:dddd";
    const email = uniqueEmail("erase6");
    const signup = await app.request("POST", "/auth/signup", { body: { email, password: PASSWORD }, headers: { "x-forwarded-for": ip } });
    expect(signup.status).toBe(201);
    const userId = signup.body.user.id as string;
    // A failed login from the same /64 leaves a lockout counter keyed by the limiter's /64 key.
    await app.request("POST", "/auth/login", { body: { email, password: "wrong password!" }, headers: { "x-forwarded-for": "2001:db8:77:1::9" } });
    const phone = "+447700900555";
    expect((await app.request("POST", "/auth/mfa/sms", { token: signup.body.accessToken, body: { password: PASSWORD, phone } })).status).toBeLessThan(300);
    expect(await keys("login_attempts")).toContain(`ip:${ipLimitKey(ip)}`);
    expect(await keys("auth_counters")).toEqual(expect.arrayContaining([`sms:user:${userId}`, `sms:phone:${sha256Hex(phone)}`]));

    await eraseUserData(fixture.database.db, userId, [authDataRights(), auditDataRights()]);

    expect(await keys("login_attempts")).not.toContain(`ip:${ipLimitKey(ip)}`);
    const left = await keys("auth_counters");
    expect(left).not.toContain(`sms:user:${userId}`);
    expect(left).not.toContain(`sms:phone:${sha256Hex(phone)}`);
    expect(left).toContain("sms:all"); // the global count is nobody's personal data
  });

  it("erases the user's verification-email counters and pending tokens", async () => {
    const email = uniqueEmail("erase-verify");
    const signup = await app.request("POST", "/auth/signup", { body: { email, password: PASSWORD } });
    const userId = signup.body.user.id as string;
    expect((await app.request("POST", "/auth/email/verification", { token: signup.body.accessToken, body: {} })).status).toBe(202);
    const counted = [`email_verification:user:${userId}`, `email_verification:address:${sha256Hex(email)}`];
    expect(await keys("auth_counters")).toEqual(expect.arrayContaining(counted));

    await eraseUserData(fixture.database.db, userId, [authDataRights(), auditDataRights()]);

    const left = await keys("auth_counters");
    for (const key of counted) expect(left).not.toContain(key);
    expect(left).toContain("email_verification:all");
    expect(await fixture.database.db.selectFrom("auth_flows").select("id").where("user_id", "=", userId).execute()).toEqual([]);
  });

  it("erases lockout counters and rate-limit buckets keyed by whatever IPv6 prefix the limiters were set to", async () => {
    const db = fixture.database.db;
    await migrateToLatest(db, [limitMigrations]);
    const wide = await startTestApp(fixture, { loginLimiter: { ipv6PrefixLength: 48 } });
    try {
      const ip = "2001:db8:48:1:aaaa:bbbb:cccc:dddd";
      const email = uniqueEmail("erase48");
      const signup = await wide.request("POST", "/auth/signup", { body: { email, password: PASSWORD }, headers: { "x-forwarded-for": ip } });
      expect(signup.status).toBe(201);
      await wide.request("POST", "/auth/login", { body: { email, password: "wrong password!" }, headers: { "x-forwarded-for": "2001:db8:48:2::9" } });
      expect(await keys("login_attempts")).toContain(`ip:${ipLimitKey(ip, 48)}`);
      // A rate limit counting IPv6 by /56, and a bucket of someone else's /56 next to it.
      const buckets = [`api:ip:${ipLimitKey(ip, 56)}`, `api:ip:${ipLimitKey("2001:db8:48:100::1", 56)}`];
      await db.insertInto("rate_limit_buckets").values(buckets.map((key) => ({ key, tokens: 1, updated_ms: Date.now(), allowed: true }))).execute();

      await eraseUserData(db, signup.body.user.id as string, [authDataRights(), auditDataRights()]);

      expect(await keys("login_attempts")).not.toContain(`ip:${ipLimitKey(ip, 48)}`);
      const left = (await db.selectFrom("rate_limit_buckets").select("key").where("key", "in", buckets).execute()).map((r) => r.key);
      expect(left).toEqual([buckets[1]]);
    } finally {
      await wide.close();
    }
  });

  it("drops SMS counters whose window has passed and keeps live ones", async () => {
    const db = fixture.database.db;
    const now = new Date();
    const old = new Date(now.getTime() - 40 * 86_400_000);
    await db
      .insertInto("auth_counters")
      .values([
        { key: "sms:user:old-window", window_start: old, count: 3 },
        { key: "sms:user:live-window", window_start: new Date(now.getTime() - 60_000), count: 1 },
        { key: "sms:challenge:no-such-flow", window_start: new Date(0), count: 2 },
      ])
      .execute();
    const live = sha256Hex(`live-${now.getTime()}`);
    await db.insertInto("auth_flows").values({ id: live, kind: "mfa_login", user_id: null, data: "{}", attempts: 0, expires_at: new Date(now.getTime() + 300_000) }).execute();
    await db.insertInto("auth_counters").values({ key: `sms:challenge:${live}`, window_start: new Date(0), count: 1 }).execute();

    const report = await purgeExpired(db, gatewayRetentionRules(), { now: () => now });
    expect(report.auth_counters).toBeGreaterThanOrEqual(2);
    const left = await keys("auth_counters");
    expect(left).not.toContain("sms:user:old-window");
    expect(left).not.toContain("sms:challenge:no-such-flow");
    expect(left).toContain("sms:user:live-window");
    expect(left).toContain(`sms:challenge:${live}`);
  });
});
