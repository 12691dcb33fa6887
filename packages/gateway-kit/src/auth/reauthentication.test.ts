import { afterAll, beforeAll, expect, it } from "vitest";
import { errorStatus } from "../http-error.js";
import { AuthError } from "../errors.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { enrolTotpFactor, migrateForTests, PASSWORD, signup, startTestApp, type TestApp } from "./test-app.js";
import { totpCode } from "./totp.js";

// The attacker holds a victim's access token (or refresh token), nothing else: not the password.
describeEachDatabase("re-authentication before changing how an account signs in or minting an API key", (fixture) => {
  let app: TestApp;
  let ipCounter = 0;
  const freshIp = () => {
    ipCounter += 1;
    return `10.77.${(ipCounter >> 8) & 255}.${ipCounter & 255}`;
  };
  beforeAll(async () => {
    await migrateForTests(fixture);
    app = await startTestApp(fixture);
  });
  afterAll(() => app?.close());

  const login = (email: string) => app.request("POST", "/auth/login", { body: { email, password: PASSWORD }, headers: { "x-forwarded-for": freshIp() } });
  const factorsOf = async (userId: string) => app.service.stores.mfa.factors(userId);

  it("refuses to start any factor enrolment with a bare access token, so a thief cannot take over the next login", async () => {
    const victim = await signup(app);
    const token = victim.accessToken;
    const sent = app.smsMessages.length;
    for (const [path, body] of [
      ["/auth/mfa/totp", {}],
      ["/auth/mfa/sms", { phone: "+447700900555" }],
      ["/auth/mfa/webauthn/register/options", {}],
    ] as const) {
      const res = await app.request("POST", path, { token, body });
      expect(res.status, path).toBe(401);
      expect(res.body.error.code, path).toBe("reauthentication_required");
      expect(res.headers.get("www-authenticate"), path).toBe('Bearer error="insufficient_user_authentication"');
    }
    expect(await factorsOf(victim.user.id)).toEqual([]);
    expect(app.smsMessages.length).toBe(sent);
    // The owner's next login needs nothing the thief holds.
    expect((await login(victim.email)).body.status).toBe("authenticated");
  });

  it("enrols with the password, and a wrong password is counted by the login limiter", async () => {
    const user = await signup(app);
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) {
      statuses.push((await app.request("POST", "/auth/mfa/totp", { token: user.accessToken, body: { password: `guess ${i}` }, headers: { "x-forwarded-for": freshIp() } })).status);
    }
    expect(statuses.slice(0, 5)).toEqual([403, 403, 403, 403, 403]);
    expect(statuses.slice(5)).toContain(429);
    expect(await factorsOf(user.user.id)).toEqual([]);

    app.clock.advance(2 * 3_600_000);
    const fresh = await app.request("POST", "/auth/token/refresh", { body: { refreshToken: user.refreshToken } });
    const enrol = await app.request("POST", "/auth/mfa/totp", { token: fresh.body.accessToken, body: { password: PASSWORD, label: "phone" } });
    expect(enrol.status).toBe(201);
    // Confirming needs the secret only the re-authenticated caller was shown.
    const confirm = await app.request("POST", "/auth/mfa/totp/verify", { token: fresh.body.accessToken, body: { factorId: enrol.body.factorId, code: totpCode(enrol.body.secret, app.clock.now()) } });
    expect(confirm.status).toBe(200);
    expect(confirm.body.recoveryCodes).toHaveLength(10);

    const sms = await app.request("POST", "/auth/mfa/sms", { token: fresh.body.accessToken, body: { phone: "+447700900556", password: PASSWORD } });
    expect(sms.status).toBe(201);
    const webauthn = await app.request("POST", "/auth/mfa/webauthn/register/options", { token: fresh.body.accessToken, body: { password: PASSWORD } });
    expect(webauthn.status).toBe(200);
  });

  it("refuses to mint an API key with a bare access token: a stolen session must not become a credential that outlives it", async () => {
    const victim = await signup(app);
    const keysOf = async (token: string) => (await app.request("GET", "/auth/api-keys", { token })).body.apiKeys as unknown[];
    const bare = await app.request("POST", "/auth/api-keys", { token: victim.accessToken, body: { name: "ci", scopes: ["sessions:read"] } });
    expect(bare.status).toBe(401);
    expect(bare.body.error).toMatchObject({ code: "reauthentication_required", details: { reason: "password_required" } });
    expect(bare.headers.get("www-authenticate")).toBe('Bearer error="insufficient_user_authentication"');
    // Calling the service directly is no way round it.
    const principal = await app.service.verifyAccessToken(victim.accessToken);
    await expect(app.service.createApiKey(principal, { name: "direct", scopes: ["sessions:read"] })).rejects.toMatchObject({ code: "reauthentication_required" });
    // Guessing is counted by the login limiter, like any password check.
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) {
      statuses.push((await app.request("POST", "/auth/api-keys", { token: victim.accessToken, body: { name: "ci", scopes: ["sessions:read"], password: `guess ${i}` }, headers: { "x-forwarded-for": freshIp() } })).status);
    }
    expect(statuses.slice(0, 5)).toEqual([403, 403, 403, 403, 403]);
    expect(statuses.slice(5)).toContain(429);
    expect(await keysOf(victim.accessToken)).toEqual([]);

    const owner = await signup(app);
    const minted = await app.request("POST", "/auth/api-keys", { token: owner.accessToken, body: { name: "ci", scopes: ["sessions:read", "api_keys:manage"], password: PASSWORD } });
    expect(minted.status).toBe(201);
    // A key never mints a key, password or not, by either header.
    for (const headers of [{ authorization: `Bearer ${minted.body.key}` }, { "x-api-key": minted.body.key as string }] as Array<Record<string, string>>) {
      const child = await app.request("POST", "/auth/api-keys", { headers, body: { name: "child", scopes: ["sessions:read"], password: PASSWORD } });
      expect(child.status).toBe(401);
    }
    expect(await keysOf(owner.accessToken)).toHaveLength(1);
  });

  it("lets an account without a password mint an API key only within minutes of signing in", async () => {
    const user = await signup(app);
    await fixture.database.db.updateTable("users").set({ password_hash: null }).where("id", "=", user.user.id).execute();
    expect((await app.request("POST", "/auth/api-keys", { token: user.accessToken, body: { name: "fresh", scopes: ["sessions:read"] } })).status).toBe(201);
    app.clock.advance(10 * 60_000);
    const stale = (await app.request("POST", "/auth/token/refresh", { body: { refreshToken: user.refreshToken } })).body.accessToken as string;
    const refused = await app.request("POST", "/auth/api-keys", { token: stale, body: { name: "later", scopes: ["sessions:read"], password: "anything at all" } });
    expect(refused.status).toBe(401);
    expect(refused.body.error).toMatchObject({ code: "reauthentication_required", details: { reason: "recent_sign_in_required" } });
    expect((await app.request("GET", "/auth/api-keys", { token: stale })).body.apiKeys).toHaveLength(1);
  });

  it("needs the password to remove a factor or replace recovery codes, whatever the session's age", async () => {
    const user = await signup(app);
    const { factorId } = await enrolTotpFactor(app, user.accessToken);
    const noPassword = await app.request("DELETE", `/auth/mfa/factors/${factorId}`, { token: user.accessToken, body: {} });
    expect(noPassword.status).toBe(401);
    expect(noPassword.body.error).toMatchObject({ code: "reauthentication_required", details: { reason: "password_required" } });
    const codes = await app.request("POST", "/auth/mfa/recovery-codes", { token: user.accessToken });
    expect(codes.body.error.code).toBe("reauthentication_required");
    expect(await factorsOf(user.user.id)).toHaveLength(1);
  });

  it("lets an account without a password prove itself only by a recent sign-in", async () => {
    const user = await signup(app);
    // An account that only ever signs in through an OAuth provider has no password to give.
    await fixture.database.db.updateTable("users").set({ password_hash: null }).where("id", "=", user.user.id).execute();

    // Signed in moments ago: that is the proof.
    const enrol = await app.request("POST", "/auth/mfa/totp", { token: user.accessToken, body: {} });
    expect(enrol.status).toBe(201);
    const confirm = await app.request("POST", "/auth/mfa/totp/verify", { token: user.accessToken, body: { factorId: enrol.body.factorId, code: totpCode(enrol.body.secret, app.clock.now()) } });
    expect(confirm.status).toBe(200);

    // Ten minutes later, a token refreshed from the same session no longer is, whatever it was given.
    app.clock.advance(10 * 60_000);
    const stale = (await app.request("POST", "/auth/token/refresh", { body: { refreshToken: user.refreshToken } })).body.accessToken as string;
    for (const [method, path, body] of [
      ["POST", "/auth/mfa/totp", {}],
      ["POST", "/auth/mfa/webauthn/register/options", { password: "anything at all" }],
      ["DELETE", `/auth/mfa/factors/${enrol.body.factorId}`, {}],
      ["POST", "/auth/mfa/recovery-codes", {}],
    ] as const) {
      const res = await app.request(method, path, { token: stale, body });
      expect(res.status, path).toBe(401);
      expect(res.body.error.code, path).toBe("reauthentication_required");
      expect(res.body.error.details, path).toMatchObject({ reason: "recent_sign_in_required", maxAgeSeconds: 300 });
      expect(res.headers.get("www-authenticate"), path).toBe('Bearer error="insufficient_user_authentication", max_age=300');
    }
    expect((await factorsOf(user.user.id)).filter((f) => f.confirmedAt !== null)).toHaveLength(1);
  });

  it("never lets an API key principal re-authenticate, even calling the service directly", async () => {
    const user = await signup(app);
    const key = await app.request("POST", "/auth/api-keys", { token: user.accessToken, body: { name: "ci", scopes: ["sessions:read"], password: PASSWORD } });
    const principal = await app.service.verifyApiKey(key.body.key);
    for (const attempt of [
      () => app.service.enrolTotp(principal, undefined, { password: PASSWORD }),
      () => app.service.enrolSms(principal, "+447700900557", { password: PASSWORD }),
      () => app.service.webauthnRegistrationOptions(principal, { password: PASSWORD }),
      () => app.service.regenerateRecoveryCodes(principal, PASSWORD),
      () => app.service.createApiKey(principal, { name: "wider", scopes: ["sessions:read"] }, { password: PASSWORD }),
    ]) {
      const error = await attempt().then(() => undefined, (e: unknown) => e);
      expect(error).toBeInstanceOf(AuthError);
      expect((error as AuthError).code).toBe("forbidden");
    }
    expect(await factorsOf(user.user.id)).toEqual([]);
  });

  it("offers the same check to a host's own sensitive routes", async () => {
    const user = await signup(app);
    const principal = await app.service.verifyAccessToken(user.accessToken);
    await expect(app.service.reauthenticate(principal, { password: PASSWORD }, { ip: freshIp() })).resolves.toBeUndefined();
    await expect(app.service.reauthenticate(principal, {}, { ip: freshIp() })).rejects.toMatchObject({ code: "reauthentication_required" });
    await expect(app.service.reauthenticate(principal, { password: "not it at all" }, { ip: freshIp() })).rejects.toMatchObject({ code: "invalid_password" });
  });

  it("maps reauthentication_required to 401 in the one status table", () => {
    expect(errorStatus(new AuthError("reauthentication_required", "Confirm your password"))).toBe(401);
  });
});
