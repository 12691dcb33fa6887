import { AuthError } from "../errors.js";
import { errorStatus } from "../http-error.js";
import { afterAll, beforeAll, expect, it } from "vitest";
import { authDataRights } from "../privacy/auth-contributor.js";
import { eraseUserData } from "../privacy/data-rights.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { totpCode } from "./totp.js";
import { addMember, enrolSmsFactor, enrolTotpFactor, lastSmsCode, migrateForTests, PASSWORD, signup, startTestApp, uniqueEmail, type TestApp } from "./test-app.js";

describeEachDatabase("credentials that must not survive", (fixture) => {
  let app: TestApp;
  beforeAll(async () => {
    await migrateForTests(fixture);
    app = await startTestApp(fixture);
  });
  afterAll(() => app?.close());

  const newKey = async (token: string) => {
    const res = await app.request("POST", "/auth/api-keys", { token, body: { name: "ci", scopes: ["sessions:read"], password: PASSWORD } });
    expect(res.status).toBe(201);
    return res.body as { id: string; key: string };
  };
  const useKey = (key: string) => app.request("GET", "/v1/sessions", { token: key });

  it("revokes API keys on a password change by default", async () => {
    const user = await signup(app);
    const { key } = await newKey(user.accessToken);
    expect((await useKey(key)).status).toBe(200); // now cached
    const change = await app.request("POST", "/auth/password", { token: user.accessToken, body: { currentPassword: PASSWORD, newPassword: "a different passphrase" } });
    expect(change.status).toBe(200);
    expect(change.body.revokedApiKeys).toBe(1);
    const after = await useKey(key);
    expect(after.status).toBe(401);
    expect(after.body.error.code).toBe("invalid_api_key");
  });

  it("keeps API keys across a password change when the host opts out", async () => {
    const keeping = await startTestApp(fixture, { revokeApiKeysOnPasswordChange: false });
    try {
      const res = await keeping.request("POST", "/auth/signup", { body: { email: uniqueEmail(), password: PASSWORD } });
      const key = (await keeping.request("POST", "/auth/api-keys", { token: res.body.accessToken, body: { name: "ci", scopes: ["sessions:read"], password: PASSWORD } })).body.key;
      const change = await keeping.request("POST", "/auth/password", { token: res.body.accessToken, body: { currentPassword: PASSWORD, newPassword: "a different passphrase" } });
      expect(change.body.revokedApiKeys).toBe(0);
      expect((await keeping.request("GET", "/v1/sessions", { token: key })).status).toBe(200);
    } finally {
      await keeping.close();
    }
  });

  it("ends a second-factor challenge begun with the old password when the password changes", async () => {
    const user = await signup(app);
    const { secret } = await enrolTotpFactor(app, user.accessToken);
    app.clock.advance(60_000);
    // Someone holding the old password got as far as the second factor ...
    const pending = await app.request("POST", "/auth/login", { body: { email: user.email, password: PASSWORD } });
    expect(pending.body.status).toBe("mfa_required");
    const change = await app.request("POST", "/auth/password", { token: user.accessToken, body: { currentPassword: PASSWORD, newPassword: "a different passphrase" } });
    expect(change.status).toBe(200);
    // ... and cannot finish with it after the change.
    const late = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: pending.body.challengeToken, method: "totp", code: totpCode(secret, app.clock.now()) } });
    expect(late.status).toBe(401);
    expect(late.body.error.code).toBe("invalid_challenge");
  });

  it("signs out everywhere: every session and refresh family, and API keys when asked", async () => {
    const user = await signup(app);
    const other = await app.request("POST", "/auth/login", { body: { email: user.email, password: PASSWORD } });
    const { key } = await newKey(user.accessToken);
    const keep = await app.request("POST", "/auth/logout/everywhere", { token: other.body.accessToken, body: {} });
    expect(keep.status).toBe(200);
    expect(keep.body).toEqual({ revokedSessions: 2, revokedApiKeys: 0 });
    expect(keep.headers.get("cache-control")).toBe("no-store");
    for (const token of [user.accessToken, other.body.accessToken]) expect((await app.request("GET", "/auth/me", { token })).status).toBe(401);
    for (const refreshToken of [user.refreshToken, other.body.refreshToken]) {
      expect((await app.request("POST", "/auth/token/refresh", { body: { refreshToken } })).status).toBe(401);
    }
    expect((await useKey(key)).status).toBe(200);

    const again = await app.request("POST", "/auth/login", { body: { email: user.email, password: PASSWORD } });
    const all = await app.request("POST", "/auth/logout/everywhere", { token: again.body.accessToken, body: { includeApiKeys: true } });
    expect(all.body).toEqual({ revokedSessions: 1, revokedApiKeys: 1 });
    expect((await useKey(key)).status).toBe(401);
  });

  it("stops an erased user's cached API key at once once the service is told", async () => {
    const user = await signup(app);
    const { key } = await newKey(user.accessToken);
    expect((await useKey(key)).status).toBe(200); // cached for apiKeyCacheTtlMs
    await eraseUserData(fixture.database.db, user.user.id, [authDataRights()]);
    app.service.evictUser(user.user.id);
    expect((await useKey(key)).status).toBe(401);
  });

  it("keeps at least one owner per team, even when two owners demote each other at once", async () => {
    const owner = await signup(app);
    const second = await signup(app);
    const teamId = owner.teamId;
    const last = await app.service.setMemberRole(teamId, owner.user.id, "admin").catch((e) => e);
    expect(last).toBeInstanceOf(AuthError);
    expect(last).toMatchObject({ code: "last_owner" });
    expect(errorStatus(last)).toBe(409);
    const removal = await app.service.removeMember(teamId, owner.user.id).catch((e: unknown) => e);
    expect(removal).toMatchObject({ code: "last_owner" });
    expect(errorStatus(removal)).toBe(409);
    await addMember(app, teamId, second.user.id, "owner");
    const race = await Promise.allSettled([
      app.service.setMemberRole(teamId, owner.user.id, "member"),
      app.service.setMemberRole(teamId, second.user.id, "member"),
    ]);
    expect(race.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    const owners = await fixture.database.db.selectFrom("memberships").select("user_id").where("team_id", "=", teamId).where("role", "=", "owner").execute();
    expect(owners).toHaveLength(1);
    // The store itself holds the invariant, whoever calls it.
    await expect(app.service.stores.teams.setRole(teamId, owners[0]!.user_id, "viewer")).rejects.toThrow(/at least one owner/);
  });

  it("revokes a removed member's keys, and a re-invite does not bring them back", async () => {
    const owner = await signup(app);
    const member = await signup(app);
    await addMember(app, owner.teamId, member.user.id, "member");
    const login = await app.request("POST", "/auth/login", { body: { email: member.email, password: PASSWORD, teamId: owner.teamId } });
    const { key } = await newKey(login.body.accessToken);
    expect((await useKey(key)).status).toBe(200);
    await app.service.removeMember(owner.teamId, member.user.id);
    expect((await useKey(key)).status).toBe(401);
    app.clock.advance(1000);
    await addMember(app, owner.teamId, member.user.id, "member");
    expect((await useKey(key)).status).toBe(401);

    // A membership deleted behind the service's back does not resurrect old keys either.
    const other = await signup(app);
    await addMember(app, owner.teamId, other.user.id, "member");
    const otherLogin = await app.request("POST", "/auth/login", { body: { email: other.email, password: PASSWORD, teamId: owner.teamId } });
    const otherKey = await newKey(otherLogin.body.accessToken);
    await fixture.database.db.deleteFrom("memberships").where("team_id", "=", owner.teamId).where("user_id", "=", other.user.id).execute();
    app.clock.advance(10_000);
    await addMember(app, owner.teamId, other.user.id, "member");
    expect((await useKey(otherKey.key)).status).toBe(401);
  });

  it("caps SMS sends per account, per number and per challenge, and in all", async () => {
    const user = await signup(app);
    // Enrolment: a fresh account spraying numbers stops at the per-account cap.
    const statuses: number[] = [];
    for (let i = 0; i < 40; i++) {
      statuses.push((await app.request("POST", "/auth/mfa/sms", { token: user.accessToken, body: { password: PASSWORD, phone: `+4477009${String(10_000 + i)}` } })).status);
    }
    expect(statuses.filter((s) => s === 201)).toHaveLength(5);
    expect(statuses.slice(5).every((s) => s === 429)).toBe(true);
    const refused = await app.request("POST", "/auth/mfa/sms", { token: user.accessToken, body: { password: PASSWORD, phone: "+447700900999" } });
    expect(refused.body.error).toMatchObject({ code: "sms_limit", details: { scope: "user" } });

    // Login: one challenge cannot text one phone thirty times.
    app.clock.advance(3_600_000);
    const victim = await signup(app);
    const phone = "+447700955501";
    const { factorId } = await enrolSmsFactor(app, victim.accessToken, phone);
    expect(lastSmsCode(app, phone)).toMatch(/^\d{6}$/);
    const challengeToken = (await app.request("POST", "/auth/login", { body: { email: victim.email, password: PASSWORD } })).body.challengeToken;
    const sends: number[] = [];
    for (let i = 0; i < 30; i++) sends.push((await app.request("POST", "/auth/login/mfa/sms", { body: { challengeToken, factorId } })).status);
    expect(sends.filter((s) => s === 202)).toHaveLength(3);

    // Per number, whoever asks: other accounts cannot pile texts onto one phone.
    app.clock.advance(3_600_000);
    const target = "+447700955502";
    let delivered = 0;
    for (let i = 0; i < 8; i++) {
      const someone = await signup(app);
      if ((await app.request("POST", "/auth/mfa/sms", { token: someone.accessToken, body: { password: PASSWORD, phone: target } })).status === 201) delivered += 1;
    }
    expect(delivered).toBe(5);
  });

  it("lets the host set a global SMS ceiling", async () => {
    const capped = await startTestApp(fixture, { smsLimits: { global: { limit: 3, windowSeconds: 3600 } } });
    try {
      let sent = 0;
      for (let i = 0; i < 6; i++) {
        const res = await capped.request("POST", "/auth/signup", { body: { email: uniqueEmail("cap"), password: PASSWORD } });
        const send = await capped.request("POST", "/auth/mfa/sms", { token: res.body.accessToken, body: { password: PASSWORD, phone: `+44770096${String(1000 + i)}` } });
        if (send.status === 201) sent += 1;
        else expect(send.body.error.details.scope).toBe("all");
      }
      expect(sent).toBe(3);
      expect(capped.smsMessages).toHaveLength(3);
    } finally {
      await capped.close();
    }
  });
});
