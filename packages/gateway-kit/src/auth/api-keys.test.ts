import { ConfigError } from "../errors.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { describeEachDatabase } from "../testing/each-database.js";
import { mintApiKey, parseApiKey, secretMatches } from "./api-keys.js";
import { authenticate, requirePermission, requireScope } from "./authenticate.js";
import { addMember, migrateForTests, PASSWORD, signup, startTestApp, type TestApp } from "./test-app.js";

describe("API key format", () => {
  it("mints high-entropy keys that parse back and match only their own hash", () => {
    const a = mintApiKey();
    const b = mintApiKey();
    expect(a.key).toMatch(/^keen_[a-z2-7]{12}_[A-Za-z0-9_-]{43}$/);
    expect(a.key).not.toBe(b.key);
    const parsed = parseApiKey(a.key)!;
    expect(parsed.prefix).toBe(a.prefix);
    expect(secretMatches(parsed.secret, a.secretHash)).toBe(true);
    expect(secretMatches(parsed.secret, b.secretHash)).toBe(false);
    // Unknown prefix: compared against the dummy hash, never a match.
    expect(secretMatches(parsed.secret, undefined)).toBe(false);
    expect(parseApiKey("keen_short_x")).toBeUndefined();
    expect(a.secretHash).not.toContain(parsed.secret);
  });
});

describe("middleware options", () => {
  it("throws a ConfigError for bad options at creation", () => {
    expect(() => authenticate({ service: {} as never })).toThrow(ConfigError);
    expect(() => requireScope()).toThrow(ConfigError);
    expect(() => requireScope("Not A Scope!")).toThrow(ConfigError);
    expect(() => requirePermission("billing:steal" as never)).toThrow(/Unknown permission/);
  });
});

describeEachDatabase("API keys and permissions", (fixture) => {
  let app: TestApp;
  beforeAll(async () => {
    await migrateForTests(fixture);
    app = await startTestApp(fixture);
  });
  afterAll(() => app?.close());

  // Minting re-authenticates; every account here signs up with PASSWORD.
  const createKey = (token: string, body: Record<string, unknown>) => app.request("POST", "/auth/api-keys", { token, body: { password: PASSWORD, ...body } });

  it("shows a key once, stores only its hash, authenticates with it and tracks last use", async () => {
    const owner = await signup(app);
    const res = await createKey(owner.accessToken, { name: "ci", scopes: ["sessions:read"] });
    expect(res.status).toBe(201);
    expect(res.body.key).toMatch(/^keen_/);
    const row = await fixture.database.db.selectFrom("api_keys").selectAll().where("id", "=", res.body.id).executeTakeFirstOrThrow();
    expect(JSON.stringify(row)).not.toContain(parseApiKey(res.body.key)!.secret);
    expect(row.last_used_at).toBeNull();

    const list = await app.request("GET", "/auth/api-keys", { token: owner.accessToken });
    expect(list.body.apiKeys).toHaveLength(1);
    expect(JSON.stringify(list.body)).not.toContain(res.body.key);

    const use = await app.request("GET", "/v1/sessions", { token: res.body.key });
    expect(use.status).toBe(200);
    expect(use.body.principal).toEqual({ userId: owner.user.id, teamId: owner.teamId, via: "api_key", scopes: ["sessions:read"], apiKeyId: res.body.id });
    const viaHeader = await app.request("GET", "/v1/sessions", { headers: { "x-api-key": res.body.key } });
    expect(viaHeader.status).toBe(200);
    const touched = await fixture.database.db.selectFrom("api_keys").select("last_used_at").where("id", "=", res.body.id).executeTakeFirstOrThrow();
    expect(touched.last_used_at?.getTime()).toBe(app.clock.ms);
  });

  it("rejects wrong secrets, unknown prefixes and malformed keys alike with 401", async () => {
    const owner = await signup(app);
    const { body } = await createKey(owner.accessToken, { name: "k", scopes: ["sessions:read"] });
    const { prefix } = parseApiKey(body.key)!;
    const wrongSecret = `keen_${prefix}_${"A".repeat(43)}`;
    const unknownPrefix = `keen_${"a".repeat(12)}_${parseApiKey(body.key)!.secret}`;
    for (const key of [wrongSecret, unknownPrefix, "keen_nope"]) {
      const res = await app.request("GET", "/v1/sessions", { token: key });
      expect(res.status).toBe(401);
      expect(res.body.error).toEqual({ code: "invalid_api_key", message: "Invalid API key" });
    }
  });

  it("narrows scopes: a key never carries more than its scopes, nor more than its owner holds", async () => {
    const owner = await signup(app);
    const readOnly = (await createKey(owner.accessToken, { name: "ro", scopes: ["sessions:read"] })).body.key;
    const denied = await app.request("POST", "/v1/sessions", { token: readOnly, body: {} });
    expect(denied.status).toBe(403);
    expect(denied.body.error).toMatchObject({ code: "insufficient_scope", details: { missing: "sessions:write" } });
    // The owner (a JWT) may do what the key may not.
    expect((await app.request("POST", "/v1/sessions", { token: owner.accessToken, body: {} })).status).toBe(201);

    // A viewer cannot mint a key with rights they lack.
    const viewer = await signup(app);
    await addMember(app, owner.teamId, viewer.user.id, "viewer");
    const viewerLogin = await app.request("POST", "/auth/login", { body: { email: viewer.email, password: PASSWORD, teamId: owner.teamId } });
    expect(viewerLogin.body.teamId).toBe(owner.teamId);
    const widen = await createKey(viewerLogin.body.accessToken, { name: "w", scopes: ["sessions:write"] });
    expect(widen.status).toBe(403);

    // A member's key with sessions:write shrinks when the member is demoted to viewer.
    const member = await signup(app);
    await addMember(app, owner.teamId, member.user.id, "member");
    const memberLogin = await app.request("POST", "/auth/login", { body: { email: member.email, password: PASSWORD, teamId: owner.teamId } });
    const memberKey = (await createKey(memberLogin.body.accessToken, { name: "m", scopes: ["sessions:read", "sessions:write"] })).body.key;
    const noCache = await startTestApp(fixture, { apiKeyCacheTtlMs: 0 });
    try {
      expect((await noCache.request("POST", "/v1/sessions", { token: memberKey, body: {} })).status).toBe(201);
      await app.service.stores.teams.setRole(owner.teamId, member.user.id, "viewer");
      const demoted = await noCache.request("POST", "/v1/sessions", { token: memberKey, body: {} });
      expect(demoted.status).toBe(403);
      expect((await noCache.request("GET", "/v1/sessions", { token: memberKey })).body.principal.scopes).toEqual(["sessions:read"]);
    } finally {
      await noCache.close();
    }
  });

  it("maps roles to permissions and names the missing one in a 403", async () => {
    const owner = await signup(app);
    expect((await app.request("GET", "/v1/billing", { token: owner.accessToken })).status).toBe(200);
    const roles = { admin: [403, 200], member: [403, 403], viewer: [403, 403] } as const;
    for (const [role, [billing, audit]] of Object.entries(roles)) {
      const user = await signup(app);
      await addMember(app, owner.teamId, user.user.id, role as "admin");
      const login = await app.request("POST", "/auth/login", { body: { email: user.email, password: PASSWORD, teamId: owner.teamId } });
      const b = await app.request("GET", "/v1/billing", { token: login.body.accessToken });
      expect(b.status, role).toBe(billing);
      expect(b.body.error).toEqual({ code: "forbidden", message: "Missing permission billing:manage", details: { missing: "billing:manage" } });
      expect((await app.request("GET", "/v1/audit", { token: login.body.accessToken })).status, role).toBe(audit);
    }
    const outsider = await signup(app);
    const notMember = await app.request("POST", "/auth/login", { body: { email: outsider.email, password: PASSWORD, teamId: owner.teamId } });
    expect(notMember.status).toBe(403);
    expect(notMember.body.error.code).toBe("not_a_member");
  });

  it("returns 404 for another tenant's resource and for another tenant's key", async () => {
    const alice = await signup(app);
    const bob = await signup(app);
    await fixture.database.db.insertInto("projects").values({ id: `p-${alice.teamId}`, team_id: alice.teamId, name: "alice's" }).execute();
    const own = await app.request("GET", `/v1/projects/p-${alice.teamId}`, { token: alice.accessToken });
    expect(own.status).toBe(200);
    expect(own.body.name).toBe("alice's");
    const foreign = await app.request("GET", `/v1/projects/p-${alice.teamId}`, { token: bob.accessToken });
    const missing = await app.request("GET", "/v1/projects/does-not-exist", { token: bob.accessToken });
    expect(foreign.status).toBe(404);
    expect(foreign.body).toEqual(missing.body);

    const aliceKey = (await createKey(alice.accessToken, { name: "a", scopes: ["sessions:read"] })).body;
    const steal = await app.request("DELETE", `/auth/api-keys/${aliceKey.id}`, { token: bob.accessToken });
    expect(steal.status).toBe(404);
    expect((await app.request("GET", "/v1/sessions", { token: aliceKey.key })).status).toBe(200);
  });

  it("revokes a key immediately and refuses an expired key", async () => {
    const owner = await signup(app);
    const created = (await createKey(owner.accessToken, { name: "r", scopes: ["sessions:read"] })).body;
    expect((await app.request("GET", "/v1/sessions", { token: created.key })).status).toBe(200);
    expect((await app.request("DELETE", `/auth/api-keys/${created.id}`, { token: owner.accessToken })).status).toBe(204);
    const revoked = await app.request("GET", "/v1/sessions", { token: created.key });
    expect(revoked.status).toBe(401);
    expect(revoked.body.error.message).toBe("API key revoked");
    expect((await app.request("GET", "/auth/api-keys", { token: owner.accessToken })).body.apiKeys).toEqual([]);

    const expiresAt = new Date(app.clock.ms + 60_000).toISOString();
    const expiring = (await createKey(owner.accessToken, { name: "e", scopes: ["sessions:read"], expiresAt })).body;
    expect(expiring.expiresAt).toBe(expiresAt);
    expect((await app.request("GET", "/v1/sessions", { token: expiring.key })).status).toBe(200);
    app.clock.advance(61_000);
    const expired = await app.request("GET", "/v1/sessions", { token: expiring.key });
    expect(expired.status).toBe(401);
    expect(expired.body.error.message).toBe("API key expired");
    const past = await createKey(owner.accessToken, { name: "p", scopes: ["sessions:read"], expiresAt: new Date(app.clock.ms - 1).toISOString() });
    expect(past.status).toBe(400);
  });

  it("does not let an API key manage keys, sessions or passwords", async () => {
    const owner = await signup(app);
    const key = (await createKey(owner.accessToken, { name: "k", scopes: ["api_keys:manage"] })).body.key;
    const mint = await createKey(key, { name: "child", scopes: ["sessions:read"] });
    expect(mint.status).toBe(401);
    expect((await app.request("GET", "/auth/sessions", { token: key })).status).toBe(401);
  });
});
