import { ConfigError } from "../errors.js";
import { afterAll, beforeAll, expect, it } from "vitest";
import { describeEachDatabase } from "../testing/each-database.js";
import { migrateForTests, PASSWORD, signup, startTestApp, uniqueEmail, type TestApp } from "./test-app.js";

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");

describeEachDatabase("auth sessions", (fixture) => {
  let app: TestApp;
  beforeAll(async () => {
    await migrateForTests(fixture);
    app = await startTestApp(fixture);
  });
  afterAll(() => app?.close());

  it("signs up with a normalised email, a personal team and a hashed password", async () => {
    const email = uniqueEmail("Mixed");
    const res = await app.request("POST", "/auth/signup", { body: { email: `  ${email.toUpperCase()} `, password: PASSWORD } });
    expect(res.status).toBe(201);
    expect(res.body.user.email).toBe(email.toLowerCase());
    expect(res.body.tokenType).toBe("Bearer");
    const row = await fixture.database.db.selectFrom("users").selectAll().where("email", "=", email.toLowerCase()).executeTakeFirstOrThrow();
    expect(row.password_hash).toMatch(/^\$argon2id\$/);
    expect(row.password_hash).not.toContain(PASSWORD);
    const me = await app.request("GET", "/auth/me", { token: res.body.accessToken });
    expect(me.status).toBe(200);
    expect(me.body.teams).toEqual([expect.objectContaining({ teamId: res.body.teamId, role: "owner", personal: true })]);

    const dup = await app.request("POST", "/auth/signup", { body: { email, password: PASSWORD } });
    expect(dup.status).toBe(409);
    expect(dup.body).toEqual({ error: { code: "email_taken", message: expect.any(String) } });
  });

  it("uses OWASP argon2id parameters by default", async () => {
    const { createPasswordHasher } = await import("./password.js");
    const hash = await createPasswordHasher().hash("some long password");
    expect(hash).toMatch(/^\$argon2id\$v=19\$m=19456,t=2,p=1\$/);
    expect(() => createPasswordHasher({ memoryCost: 1 })).toThrow(ConfigError);
  });

  it("rejects bad sign-up bodies with 400 and one error shape", async () => {
    for (const body of [{}, { email: "nope", password: PASSWORD }, { email: uniqueEmail(), password: "short" }, []]) {
      const res = await app.request("POST", "/auth/signup", { body });
      expect(res.status).toBe(400);
      expect(res.body.error.code).toBe("invalid_request");
    }
    const broken = await app.request("POST", "/auth/signup", { rawBody: "{not json", headers: { "content-type": "application/json" } });
    expect(broken.status).toBe(400);
    expect(broken.body.error.code).toBe("bad_request");
  });

  it("logs in, refuses a wrong password without revealing which part was wrong", async () => {
    const user = await signup(app);
    const ok = await app.request("POST", "/auth/login", { body: { email: user.email, password: PASSWORD } });
    expect(ok.status).toBe(200);
    expect(ok.body.status).toBe("authenticated");
    const wrong = await app.request("POST", "/auth/login", { body: { email: user.email, password: "wrong password!" } });
    const unknown = await app.request("POST", "/auth/login", { body: { email: uniqueEmail("ghost"), password: "wrong password!" } });
    expect(wrong.status).toBe(401);
    expect(unknown.status).toBe(401);
    expect(wrong.body).toEqual(unknown.body);
    expect(wrong.body.error.code).toBe("invalid_credentials");
  });

  it("rotates refresh tokens and revokes the whole family when a rotated one is reused", async () => {
    const user = await signup(app);
    const first = await app.request("POST", "/auth/token/refresh", { body: { refreshToken: user.refreshToken } });
    expect(first.status).toBe(200);
    expect(first.body.refreshToken).not.toBe(user.refreshToken);
    const second = await app.request("POST", "/auth/token/refresh", { body: { refreshToken: first.body.refreshToken } });
    expect(second.status).toBe(200);

    // The first token comes back: the family (and its newest token) must die.
    const reuse = await app.request("POST", "/auth/token/refresh", { body: { refreshToken: user.refreshToken } });
    expect(reuse.status).toBe(401);
    expect(reuse.body.error.code).toBe("invalid_refresh_token");
    const newest = await app.request("POST", "/auth/token/refresh", { body: { refreshToken: second.body.refreshToken } });
    expect(newest.status).toBe(401);
    const access = await app.request("GET", "/v1/sessions", { token: second.body.accessToken });
    expect(access.status).toBe(401);
    expect(access.body.error.code).toBe("session_revoked");
    expect(app.auditEvents).toContainEqual(
      expect.objectContaining({ action: "auth.refresh_reuse", actorId: user.user.id, target: `session:${user.sessionId}`, result: "denied" }),
    );
    const row = await fixture.database.db.selectFrom("auth_sessions").selectAll().where("id", "=", user.sessionId).executeTakeFirstOrThrow();
    expect(row.revoke_reason).toBe("refresh_token_reuse");
  });

  it("refuses concurrent use of one refresh token (one wins, the family is revoked)", async () => {
    const user = await signup(app);
    const results = await Promise.all(
      [0, 1, 2].map(() => app.request("POST", "/auth/token/refresh", { body: { refreshToken: user.refreshToken } })),
    );
    expect(results.filter((r) => r.status === 200).length).toBeLessThanOrEqual(1);
    expect(results.filter((r) => r.status === 401).length).toBeGreaterThanOrEqual(2);
    const session = await fixture.database.db.selectFrom("auth_sessions").selectAll().where("id", "=", user.sessionId).executeTakeFirstOrThrow();
    expect(session.revoked_at).not.toBeNull();
  });

  it("ends sessions after the idle timeout and after the absolute maximum age", async () => {
    const idle = await signup(app);
    app.clock.advance(7 * 86_400_000 + 1000);
    const late = await app.request("POST", "/auth/token/refresh", { body: { refreshToken: idle.refreshToken } });
    expect(late.status).toBe(401);
    expect(late.body.error.code).toBe("session_expired");

    const busy = await signup(app);
    let token = busy.refreshToken;
    for (let day = 0; day < 30; day += 6) {
      app.clock.advance(6 * 86_400_000);
      const res = await app.request("POST", "/auth/token/refresh", { body: { refreshToken: token } });
      if (day + 6 < 30) {
        expect(res.status).toBe(200);
        token = res.body.refreshToken;
      } else {
        expect(res.status).toBe(401);
        expect(res.body.error.code).toBe("session_expired");
      }
    }
  });

  it("logs out, after which neither token works", async () => {
    const user = await signup(app);
    const out = await app.request("POST", "/auth/logout", { token: user.accessToken, body: {} });
    expect(out.status).toBe(204);
    expect((await app.request("GET", "/v1/sessions", { token: user.accessToken })).status).toBe(401);
    expect((await app.request("POST", "/auth/token/refresh", { body: { refreshToken: user.refreshToken } })).status).toBe(401);
    const again = await app.request("POST", "/auth/logout", { body: {} });
    expect(again.status).toBe(401);
  });

  it("lists sessions and revokes one; another user's session is 404", async () => {
    const user = await signup(app);
    const second = await app.request("POST", "/auth/login", { body: { email: user.email, password: PASSWORD }, headers: { "user-agent": "laptop" } });
    const list = await app.request("GET", "/auth/sessions", { token: user.accessToken });
    expect(list.status).toBe(200);
    expect(list.body.sessions).toHaveLength(2);
    expect(list.body.sessions.find((s: { id: string }) => s.id === user.sessionId).current).toBe(true);
    expect(list.body.sessions.find((s: { id: string }) => s.id === second.body.sessionId).userAgent).toBe("laptop");

    const stranger = await signup(app);
    const foreign = await app.request("DELETE", `/auth/sessions/${second.body.sessionId}`, { token: stranger.accessToken });
    expect(foreign.status).toBe(404);

    const revoke = await app.request("DELETE", `/auth/sessions/${second.body.sessionId}`, { token: user.accessToken });
    expect(revoke.status).toBe(204);
    expect((await app.request("GET", "/v1/sessions", { token: second.body.accessToken })).status).toBe(401);
    const after = await app.request("GET", "/auth/sessions", { token: user.accessToken });
    expect(after.body.sessions.map((s: { id: string }) => s.id)).toEqual([user.sessionId]);
  });

  it("changes the password and revokes every other session", async () => {
    const user = await signup(app);
    const other = await app.request("POST", "/auth/login", { body: { email: user.email, password: PASSWORD } });
    const wrong = await app.request("POST", "/auth/password", { token: user.accessToken, body: { currentPassword: "not it at all", newPassword: "a brand new password" } });
    expect(wrong.status).toBe(403);
    expect(wrong.body.error.code).toBe("invalid_password");
    const res = await app.request("POST", "/auth/password", { token: user.accessToken, body: { currentPassword: PASSWORD, newPassword: "a brand new password" } });
    expect(res.status).toBe(200);
    expect(res.body.revokedSessions).toBe(1);
    expect((await app.request("GET", "/v1/sessions", { token: user.accessToken })).status).toBe(200);
    expect((await app.request("GET", "/v1/sessions", { token: other.body.accessToken })).status).toBe(401);
    expect((await app.request("POST", "/auth/token/refresh", { body: { refreshToken: other.body.refreshToken } })).status).toBe(401);
    expect((await app.request("POST", "/auth/login", { body: { email: user.email, password: PASSWORD } })).status).toBe(401);
    expect((await app.request("POST", "/auth/login", { body: { email: user.email, password: "a brand new password" } })).status).toBe(200);
  });

  it("answers bad access tokens with 401 and a typed body", async () => {
    const user = await signup(app);
    const [h, p, s] = user.accessToken.split(".");
    const header = JSON.parse(Buffer.from(h!, "base64url").toString());
    const payload = JSON.parse(Buffer.from(p!, "base64url").toString());
    const cases: Array<[string, string]> = [
      ["none", `${b64({ ...header, alg: "none" })}.${p}.`],
      ["tampered", `${h}.${b64({ ...payload, tid: "someone-elses-team" })}.${s}`],
      ["garbage", "not-a-jwt"],
    ];
    for (const [name, token] of cases) {
      const res = await app.request("GET", "/v1/sessions", { token });
      expect(res.status, name).toBe(401);
      expect(res.body.error.code, name).toBe("invalid_token");
      expect(res.headers.get("www-authenticate"), name).toMatch(/^Bearer/);
      expect(JSON.stringify(res.body)).not.toMatch(/at .*\.ts/);
    }
    app.clock.advance(16 * 60_000);
    const expired = await app.request("GET", "/v1/sessions", { token: user.accessToken });
    expect(expired.status).toBe(401);
    expect(expired.body).toEqual({ error: { code: "token_expired", message: "Access token expired", details: { reason: "expired" } } });
    const missing = await app.request("GET", "/v1/sessions");
    expect(missing.status).toBe(401);
    expect(missing.body.error.code).toBe("unauthenticated");
    const basic = await app.request("GET", "/v1/sessions", { headers: { authorization: "Basic Zm9vOmJhcg==" } });
    expect(basic.status).toBe(401);
  });

  it("publishes the verification keys as a JWKS", async () => {
    const res = await app.request("GET", "/auth/.well-known/jwks.json");
    expect(res.status).toBe(200);
    expect(res.body.keys[0]).toMatchObject({ kid: app.keys.currentKid, alg: "EdDSA", kty: "OKP" });
    expect(res.body.keys[0].d).toBeUndefined();
  });
});
