import { afterAll, beforeAll, expect, it } from "vitest";
import { describeEachDatabase } from "../testing/each-database.js";
import { migrateForTests, PASSWORD, signup, startTestApp, type TestApp } from "./test-app.js";
import { totpCode } from "./totp.js";

describeEachDatabase("MFA and login limits", (fixture) => {
  let app: TestApp;
  beforeAll(async () => {
    await migrateForTests(fixture);
    app = await startTestApp(fixture);
  });
  afterAll(() => app?.close());

  async function enrolTotp(token: string) {
    const enrol = await app.request("POST", "/auth/mfa/totp", { token, body: { password: PASSWORD } });
    expect(enrol.status).toBe(201);
    expect(enrol.body.otpauthUri).toMatch(/^otpauth:\/\/totp\//);
    const confirm = await app.request("POST", "/auth/mfa/totp/verify", { token, body: { factorId: enrol.body.factorId, code: totpCode(enrol.body.secret, app.clock.now()) } });
    expect(confirm.status).toBe(200);
    return { factorId: enrol.body.factorId as string, secret: enrol.body.secret as string, recoveryCodes: confirm.body.recoveryCodes as string[] };
  }

  const login = (email: string, password = PASSWORD, ip = "10.0.0.1") =>
    app.request("POST", "/auth/login", { body: { email, password }, headers: { "x-forwarded-for": ip } });

  it("enrols TOTP, then logs in in two steps; a code is never accepted twice", async () => {
    const user = await signup(app);
    const bad = await app.request("POST", "/auth/mfa/totp", { token: user.accessToken, body: { password: PASSWORD } });
    const wrongConfirm = await app.request("POST", "/auth/mfa/totp/verify", { token: user.accessToken, body: { factorId: bad.body.factorId, code: "000000" } });
    expect(wrongConfirm.status).toBe(400);
    const { secret, recoveryCodes } = await enrolTotp(user.accessToken);
    expect(recoveryCodes).toHaveLength(10);

    app.clock.advance(30_000);
    const first = await login(user.email);
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ status: "mfa_required", factors: [expect.objectContaining({ kind: "totp" })] });
    expect(first.body.accessToken).toBeUndefined();
    const code = totpCode(secret, app.clock.now());
    const done = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: first.body.challengeToken, method: "totp", code } });
    expect(done.status).toBe(200);
    expect(done.body.accessToken).toBeTruthy();
    // The challenge is single-use.
    const again = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: first.body.challengeToken, method: "totp", code } });
    expect(again.status).toBe(401);
    expect(again.body.error.code).toBe("invalid_challenge");

    // Same code on a fresh challenge within its window: replay refused.
    const second = await login(user.email);
    const replay = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: second.body.challengeToken, method: "totp", code } });
    expect(replay.status).toBe(401);
    expect(replay.body.error.code).toBe("invalid_mfa_code");
    // One step later (drift allowed ±1) a new code works.
    app.clock.advance(30_000);
    const next = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: second.body.challengeToken, method: "totp", code: totpCode(secret, app.clock.now()) } });
    expect(next.status).toBe(200);
  });

  it("accepts a code one step old or one step ahead, and not two", async () => {
    const user = await signup(app);
    const { secret } = await enrolTotp(user.accessToken);
    for (const [offset, accepted] of [[-30_000, true], [30_000, true], [-60_000, false], [60_000, false]] as const) {
      app.clock.advance(120_000);
      const challenge = (await login(user.email)).body.challengeToken;
      const code = totpCode(secret, new Date(app.clock.ms + offset));
      const res = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: challenge, method: "totp", code } });
      expect(res.status, `offset ${offset}`).toBe(accepted ? 200 : 401);
    }
  });

  it("accepts each recovery code once, and regenerating replaces them", async () => {
    const user = await signup(app);
    const { recoveryCodes } = await enrolTotp(user.accessToken);
    const rows = await fixture.database.db.selectFrom("recovery_codes").selectAll().execute();
    expect(JSON.stringify(rows)).not.toContain(recoveryCodes[0]!.replace(/-/g, ""));
    const challenge = (await login(user.email)).body.challengeToken;
    const ok = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: challenge, method: "recovery_code", code: recoveryCodes[0]!.toUpperCase() } });
    expect(ok.status).toBe(200);
    expect(app.auditEvents).toContainEqual(expect.objectContaining({ action: "mfa.recovery_code_used", actorId: user.user.id }));
    const challenge2 = (await login(user.email)).body.challengeToken;
    const reused = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: challenge2, method: "recovery_code", code: recoveryCodes[0] } });
    expect(reused.status).toBe(401);
    const status = await app.request("GET", "/auth/mfa", { token: user.accessToken });
    expect(status.body.recoveryCodesLeft).toBe(9);

    const fresh = await app.request("POST", "/auth/mfa/recovery-codes", { token: user.accessToken, body: { password: PASSWORD } });
    expect(fresh.status).toBe(200);
    expect(fresh.body.recoveryCodes).toHaveLength(10);
    const old = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: challenge2, method: "recovery_code", code: recoveryCodes[1] } });
    expect(old.status).toBe(401);
    const renewed = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: challenge2, method: "recovery_code", code: fresh.body.recoveryCodes[1] } });
    expect(renewed.status).toBe(200);
  });

  it("voids a challenge after too many wrong factors and disables MFA only with the password", async () => {
    const user = await signup(app);
    const { factorId } = await enrolTotp(user.accessToken);
    const challenge = (await login(user.email, PASSWORD, "10.9.9.9")).body.challengeToken;
    for (let i = 0; i < 5; i++) {
      const res = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: challenge, method: "totp", code: "123456" } });
      expect(res.status).toBe(401);
    }
    const dead = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: challenge, method: "recovery_code", code: "whatever" } });
    expect(dead.body.error.code).toBe("invalid_challenge");

    // Five wrong factors count against the account's lockout too; they are forgotten after an hour.
    app.clock.advance(2 * 3_600_000);
    const wrong = await app.request("DELETE", `/auth/mfa/factors/${factorId}`, { token: (await login(user.email)).body.accessToken ?? user.accessToken, body: { password: "nope nope nope" } });
    expect(wrong.status).toBe(401); // the old access token expired while the clock moved
    const fresh = await app.request("POST", "/auth/token/refresh", { body: { refreshToken: user.refreshToken } });
    expect(fresh.status).toBe(200);
    const denied = await app.request("DELETE", `/auth/mfa/factors/${factorId}`, { token: fresh.body.accessToken, body: { password: "nope nope nope" } });
    expect(denied.status).toBe(403);
    const removed = await app.request("DELETE", `/auth/mfa/factors/${factorId}`, { token: fresh.body.accessToken, body: { password: PASSWORD } });
    expect(removed.status).toBe(204);
    expect((await login(user.email)).body.status).toBe("authenticated");
  });

  it("enrols an SMS factor through the pluggable sender and uses it to log in", async () => {
    const user = await signup(app);
    const bad = await app.request("POST", "/auth/mfa/sms", { token: user.accessToken, body: { phone: "07700 900123", password: PASSWORD } });
    expect(bad.status).toBe(400);
    const enrol = await app.request("POST", "/auth/mfa/sms", { token: user.accessToken, body: { phone: "+447700900123", password: PASSWORD } });
    expect(enrol.status).toBe(201);
    const sent = app.smsMessages.at(-1)!;
    expect(sent.phone).toBe("+447700900123");
    const code = /(\d{6})/.exec(sent.message)![1]!;
    const confirm = await app.request("POST", "/auth/mfa/sms/verify", { token: user.accessToken, body: { factorId: enrol.body.factorId, code } });
    expect(confirm.status).toBe(200);
    expect(confirm.body.recoveryCodes).toHaveLength(10);

    const challenge = (await login(user.email)).body.challengeToken;
    const send = await app.request("POST", "/auth/login/mfa/sms", { body: { challengeToken: challenge, factorId: enrol.body.factorId } });
    expect(send.status).toBe(202);
    const loginCode = /(\d{6})/.exec(app.smsMessages.at(-1)!.message)![1]!;
    const wrongCode = loginCode === "000000" ? "111111" : "000000";
    expect((await app.request("POST", "/auth/login/mfa", { body: { challengeToken: challenge, method: "sms", code: wrongCode } })).status).toBe(401);
    const ok = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: challenge, method: "sms", code: loginCode } });
    expect(ok.status).toBe(200);
  });

  it("locks an account out exponentially after repeated failures, even with the right password", async () => {
    const user = await signup(app);
    for (let i = 0; i < 4; i++) expect((await login(user.email, "wrong password", `10.1.0.${i}`)).status).toBe(401);
    // Fifth failure reaches the threshold: locked for 1 s.
    expect((await login(user.email, "wrong password", "10.1.0.9")).status).toBe(401);
    const locked = await login(user.email, PASSWORD, "10.1.1.1");
    expect(locked.status).toBe(429);
    expect(locked.body.error.code).toBe("too_many_attempts");
    expect(locked.headers.get("retry-after")).toBe("1");
    app.clock.advance(1_000);
    expect((await login(user.email, "wrong password", "10.1.0.10")).status).toBe(401);
    const longer = await login(user.email, PASSWORD, "10.1.1.1");
    expect(longer.status).toBe(429);
    expect(longer.headers.get("retry-after")).toBe("2");
    app.clock.advance(2_000);
    expect((await login(user.email, PASSWORD, "10.1.1.1")).status).toBe(200);
    // Success resets the account counter.
    expect((await login(user.email, "wrong password", "10.1.1.1")).status).toBe(401);
    expect((await login(user.email, PASSWORD, "10.1.1.1")).status).toBe(200);
  });

  it("locks an IP out across accounts, and unknown accounts are counted like real ones", async () => {
    const ip = "10.66.0.1";
    for (let i = 0; i < 20; i++) {
      expect((await login(`nobody-${i}@example.com`, "wrong password", ip)).status).toBe(401);
    }
    const user = await signup(app);
    const blocked = await login(user.email, PASSWORD, ip);
    expect(blocked.status).toBe(429);
    expect((await login(user.email, PASSWORD, "10.66.0.2")).status).toBe(200);
    for (let i = 0; i < 5; i++) await login("ghost-account@example.com", "wrong password", `10.70.0.${i}`);
    expect((await login("ghost-account@example.com", "wrong password", "10.70.1.1")).status).toBe(429);
  });
});
