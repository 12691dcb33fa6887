import { describe, expect, it } from "vitest";
import { api, signup, useTestServer } from "../testing/harness.js";

const PASSWORD = "correct horse battery staple";

/**
 * The attacker holds a user's short-lived access token (a leaked log line, a stolen browser
 * session), not the password. An API key outlives that token, its session, and a sign-out, so
 * minting one must take what the attacker does not have; and a key must never mint another.
 */
describe("attack: minting long-lived credentials from a session", () => {
  const t = useTestServer(() => ({ workers: 0 }));

  it("refuses a key to a bare session token with a coded 401, mints one with the password, and never lets a key mint a key", async () => {
    const victim = await signup(t.url);
    const keys = async () => (await api(t.url, "/v1/auth/api-keys", { headers: victim.headers })).body.apiKeys as unknown[];

    const stolen = await api(t.url, "/v1/auth/api-keys", { headers: victim.headers, body: { name: "backdoor", scopes: ["sessions:read", "sessions:write"] } });
    expect(stolen.status).toBe(401);
    expect(stolen.body.error).toMatchObject({ code: "reauthentication_required", details: { reason: "password_required" } });
    expect(stolen.headers.get("www-authenticate")).toBe('Bearer error="insufficient_user_authentication"');
    const guessed = await api(t.url, "/v1/auth/api-keys", { headers: victim.headers, body: { name: "backdoor", scopes: ["sessions:read"], password: "password123" } });
    expect(guessed.status).toBe(403);
    expect(guessed.body.error.code).toBe("invalid_password");
    expect(await keys()).toEqual([]);

    // The owner, who knows the password, gets a key that works.
    const minted = await api(t.url, "/v1/auth/api-keys", { headers: victim.headers, body: { name: "ci", scopes: ["sessions:read", "api_keys:manage"], password: PASSWORD } });
    expect(minted.status).toBe(201);
    expect((await api(t.url, "/v1/me", { headers: { "x-api-key": minted.body.key } })).body.via).toBe("api_key");

    // The key cannot mint a key (nor list or revoke them), with the password or without, by either header.
    for (const headers of [{ "x-api-key": minted.body.key as string }, { authorization: `Bearer ${minted.body.key}` }] as Array<Record<string, string>>) {
      for (const body of [{ name: "child", scopes: ["sessions:read"] }, { name: "child", scopes: ["sessions:read"], password: PASSWORD }]) {
        const child = await api(t.url, "/v1/auth/api-keys", { headers, body });
        expect(child.status).toBe(401);
        expect(child.body.error.code).toBe("unauthenticated");
      }
      expect((await api(t.url, "/v1/auth/api-keys", { headers })).status).toBe(401);
    }
    expect(await keys()).toHaveLength(1);
  });
});
