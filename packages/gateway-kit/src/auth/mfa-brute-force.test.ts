import { afterAll, beforeAll, expect, it } from "vitest";
import { describeEachDatabase } from "../testing/each-database.js";
import { enrolSmsFactor, enrolTotpFactor, lastSmsCode, migrateForTests, PASSWORD, signup, startTestApp, type TestApp } from "./test-app.js";
import { totpCode } from "./totp.js";

/** A wrong six-digit code that is not the right one for this moment (nor a step either side). */
function wrongTotp(secret: string, at: Date): string {
  const right = new Set([-30_000, 0, 30_000].map((d) => totpCode(secret, new Date(at.getTime() + d))));
  for (let n = 0; ; n++) {
    const code = String(n).padStart(6, "0");
    if (!right.has(code)) return code;
  }
}

describeEachDatabase("second-factor brute force", (fixture) => {
  let app: TestApp;
  let ipCounter = 0;
  /** A fresh client address per request, as a botnet (or one proxy-rotating attacker) would send. */
  const freshIp = () => {
    ipCounter += 1;
    return `10.${(ipCounter >> 16) & 255}.${(ipCounter >> 8) & 255}.${ipCounter & 255}`;
  };
  beforeAll(async () => {
    await migrateForTests(fixture);
    app = await startTestApp(fixture);
  });
  afterAll(() => app?.close());

  const login = (email: string, password = PASSWORD) =>
    app.request("POST", "/auth/login", { body: { email, password }, headers: { "x-forwarded-for": freshIp() } });
  const mfa = (body: Record<string, unknown>) => app.request("POST", "/auth/login/mfa", { body, headers: { "x-forwarded-for": freshIp() } });

  it("checks at most mfaMaxAttempts codes of one challenge under 300 concurrent guesses, and the right code after them fails", async () => {
    const user = await signup(app);
    const { secret } = await enrolTotpFactor(app, user.accessToken);
    app.clock.advance(60_000);
    const challengeToken = (await login(user.email)).body.challengeToken as string;
    const wrong = wrongTotp(secret, app.clock.now());
    const results = await Promise.all(Array.from({ length: 300 }, () => mfa({ challengeToken, method: "totp", code: wrong })));
    const checked = results.filter((r) => r.body?.error?.code === "invalid_mfa_code").length;
    expect(checked).toBeGreaterThan(0);
    expect(checked).toBeLessThanOrEqual(5);
    for (const r of results) expect([401, 429]).toContain(r.status);
    const right = await mfa({ challengeToken, method: "totp", code: totpCode(secret, app.clock.now()) });
    expect(right.status).not.toBe(200);
    expect(right.body.accessToken).toBeUndefined();
  });

  it("refuses the right SMS code sent after 59 concurrent wrong ones", async () => {
    const user = await signup(app);
    const phone = "+447700900201";
    const { factorId } = await enrolSmsFactor(app, user.accessToken, phone);
    app.clock.advance(60_000);
    const challengeToken = (await login(user.email)).body.challengeToken as string;
    expect((await app.request("POST", "/auth/login/mfa/sms", { body: { challengeToken, factorId } })).status).toBe(202);
    const code = lastSmsCode(app, phone);
    const wrong = code === "000000" ? "111111" : "000000";
    const results = await Promise.all(Array.from({ length: 59 }, () => mfa({ challengeToken, method: "sms", code: wrong })));
    expect(results.filter((r) => r.body?.error?.code === "invalid_mfa_code").length).toBeLessThanOrEqual(5);
    const right = await mfa({ challengeToken, method: "sms", code });
    expect(right.status).not.toBe(200);
  });

  it("counts second-factor failures against the account across fresh challenges and IPs, and clears them only on a complete login", async () => {
    const user = await signup(app);
    const { secret } = await enrolTotpFactor(app, user.accessToken);
    app.clock.advance(60_000);
    // The password is known: every try is a new challenge from a new address.
    const challenges: string[] = [];
    for (let i = 0; i < 20; i++) {
      const res = await login(user.email);
      if (res.status !== 200) break;
      challenges.push(res.body.challengeToken);
    }
    expect(challenges.length).toBeGreaterThan(6);
    const spare = challenges.pop()!;
    const wrong = wrongTotp(secret, app.clock.now());
    const results = await Promise.all(challenges.flatMap((challengeToken) => Array.from({ length: 15 }, () => mfa({ challengeToken, method: "totp", code: wrong }))));
    // Five failures per account, not five per challenge: the rest are refused unchecked.
    expect(results.filter((r) => r.body?.error?.code === "invalid_mfa_code").length).toBe(5);
    expect(results.filter((r) => r.status === 429).length).toBeGreaterThan(0);
    // Locked: neither the password nor the right second factor gets in now.
    expect((await login(user.email)).status).toBe(429);
    const right = await mfa({ challengeToken: spare, method: "totp", code: totpCode(secret, app.clock.now()) });
    expect(right.status).toBe(429);

    // After the lockout a complete login succeeds and clears the count.
    app.clock.advance(15 * 60_000);
    const next = await login(user.email);
    expect(next.body.status).toBe("mfa_required");
    // Five failures still stand, so this attempt escalated the lockout: the second factor waits it out.
    const waiting = await mfa({ challengeToken: next.body.challengeToken, method: "totp", code: totpCode(secret, app.clock.now()) });
    expect(waiting.status).toBe(429);
    app.clock.advance(Number(waiting.headers.get("retry-after")) * 1000);
    expect((await mfa({ challengeToken: next.body.challengeToken, method: "totp", code: totpCode(secret, app.clock.now()) })).status).toBe(200);
    const state = await app.service.stores.loginAttempts.get(`account:${user.email}`);
    expect(state).toBeUndefined();
  });

  it("does not clear the account's failures on a right password while the second factor is still due", async () => {
    const user = await signup(app);
    const { secret } = await enrolTotpFactor(app, user.accessToken);
    app.clock.advance(60_000);
    for (let i = 0; i < 4; i++) {
      const challengeToken = (await login(user.email)).body.challengeToken;
      expect((await mfa({ challengeToken, method: "totp", code: wrongTotp(secret, app.clock.now()) })).status).toBe(401);
    }
    // A right password with no second factor leaves those four failures standing ...
    expect((await login(user.email)).body.status).toBe("mfa_required");
    expect((await app.service.stores.loginAttempts.get(`account:${user.email}`))?.failures).toBe(4);
  });

  it("sends every password re-check (remove factor, recovery codes, password change) through the limiter", async () => {
    for (const attempt of [
      (token: string, factorId: string, password: string) => app.request("DELETE", `/auth/mfa/factors/${factorId}`, { token, body: { password }, headers: { "x-forwarded-for": freshIp() } }),
      (token: string, _factorId: string, password: string) => app.request("POST", "/auth/mfa/recovery-codes", { token, body: { password }, headers: { "x-forwarded-for": freshIp() } }),
      (token: string, _factorId: string, password: string) =>
        app.request("POST", "/auth/password", { token, body: { currentPassword: password, newPassword: "a brand new passphrase" }, headers: { "x-forwarded-for": freshIp() } }),
    ]) {
      const user = await signup(app);
      const { factorId } = await enrolTotpFactor(app, user.accessToken);
      const statuses: number[] = [];
      for (let i = 0; i < 30; i++) statuses.push((await attempt(user.accessToken, factorId, `guess number ${i}`)).status);
      expect(statuses.slice(0, 5)).toEqual([403, 403, 403, 403, 403]);
      expect(statuses.slice(5)).toContain(429);
      // The oracle is closed: the right password during the lockout is refused like a wrong one.
      expect((await attempt(user.accessToken, factorId, PASSWORD)).status).toBe(429);
      app.clock.advance(2 * 3_600_000);
      const refreshed = await app.request("POST", "/auth/token/refresh", { body: { refreshToken: user.refreshToken } });
      expect([200, 204]).toContain((await attempt(refreshed.body.accessToken, factorId, PASSWORD)).status);
    }
  });

  it("checks at most mfaMaxAttempts SMS enrolment codes under 100 concurrent guesses", async () => {
    const user = await signup(app);
    const phone = "+447700900203";
    const enrol = await app.request("POST", "/auth/mfa/sms", { token: user.accessToken, body: { phone, password: PASSWORD } });
    const code = lastSmsCode(app, phone);
    const wrong = code === "000000" ? "111111" : "000000";
    const results = await Promise.all(
      Array.from({ length: 100 }, () => app.request("POST", "/auth/mfa/sms/verify", { token: user.accessToken, body: { factorId: enrol.body.factorId, code: wrong } })),
    );
    expect(results.every((r) => r.status === 400)).toBe(true);
    const right = await app.request("POST", "/auth/mfa/sms/verify", { token: user.accessToken, body: { factorId: enrol.body.factorId, code } });
    expect(right.status).toBe(400);
  });

  it("accepts one recovery code once when it is sent on 20 challenges at the same moment", async () => {
    const user = await signup(app);
    const { recoveryCodes } = await enrolTotpFactor(app, user.accessToken);
    const challenges: string[] = [];
    for (let i = 0; i < 20; i++) challenges.push((await login(user.email)).body.challengeToken);
    const results = await Promise.all(challenges.map((challengeToken) => mfa({ challengeToken, method: "recovery_code", code: recoveryCodes[0] })));
    expect(results.filter((r) => r.status === 200)).toHaveLength(1);
  });

  it("creates one account when the same signup arrives 50 times at once", async () => {
    const email = `twin-${Date.now()}@example.com`;
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) => app.request("POST", "/auth/signup", { body: { email: i % 2 ? email : ` ${email.toUpperCase()} `, password: PASSWORD } })),
    );
    expect(results.filter((r) => r.status === 201)).toHaveLength(1);
    expect(results.filter((r) => r.status === 409)).toHaveLength(49);
  });

  it("voids an SMS login code when its factor is deleted", async () => {
    const user = await signup(app);
    const phone = "+447700900202";
    const { factorId } = await enrolSmsFactor(app, user.accessToken, phone);
    await enrolTotpFactor(app, user.accessToken);
    app.clock.advance(60_000);
    const challengeToken = (await login(user.email)).body.challengeToken as string;
    expect((await app.request("POST", "/auth/login/mfa/sms", { body: { challengeToken, factorId } })).status).toBe(202);
    const code = lastSmsCode(app, phone);
    expect((await app.request("DELETE", `/auth/mfa/factors/${factorId}`, { token: user.accessToken, body: { password: PASSWORD } })).status).toBe(204);
    const res = await mfa({ challengeToken, method: "sms", code });
    expect(res.status).toBe(401);
    expect(res.body.error.code).toBe("invalid_mfa_code");
  });

  it("counts an attempt while concurrent right logins and erasures delete the same key's row, without an error", async () => {
    // A right password releases the count (deleting the row at one failure); an erasure
    // deletes it too. A claim racing either must still find or make its row, never fail.
    const store = app.service.stores.loginAttempts;
    const policy = { resetBefore: new Date(0), lockoutMs: () => 0 };
    for (let round = 0; round < 40; round++) {
      const key = `account:race-${round}-${Math.random().toString(36).slice(2)}@example.com`;
      await store.claim(key, new Date(), policy);
      const outcomes = await Promise.allSettled(
        Array.from({ length: 12 }, (_, i) => (i % 3 === 0 ? store.clear(key) : i % 3 === 1 ? store.release(key, 5) : store.claim(key, new Date(), policy))),
      );
      expect(outcomes.filter((o) => o.status === "rejected")).toEqual([]);
    }
  });
});
