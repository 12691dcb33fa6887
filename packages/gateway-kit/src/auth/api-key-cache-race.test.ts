import { afterAll, beforeAll, expect, it } from "vitest";
import { authDataRights } from "../privacy/auth-contributor.js";
import { eraseUserData } from "../privacy/data-rights.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { createKyselyAuthStores } from "./kysely-stores.js";
import type { AuthStores } from "./stores.js";
import { addMember, migrateForTests, PASSWORD, signup, startTestApp, type TestApp } from "./test-app.js";

/**
 * A key lookup that read the database before a revocation (or the owner's eviction) and
 * finishes after it must not put what it read into the cache: otherwise the revoked key keeps
 * working for the cache's lifetime. The lookup is held between its read and its return by the
 * store this test builds, so the order is exact, not a matter of timing.
 */
describeEachDatabase("attack: a key lookup in flight across its revocation", (fixture) => {
  let app: TestApp;
  /** Set to hold the next lookup after it has read the database. */
  let hold: { read: () => void; release: Promise<void> } | undefined;

  beforeAll(async () => {
    await migrateForTests(fixture);
    const real = createKyselyAuthStores(fixture.database.db);
    const apiKeys: AuthStores["apiKeys"] = Object.create(real.apiKeys);
    apiKeys.findForVerification = async (prefix) => {
      const found = await real.apiKeys.findForVerification(prefix);
      const held = hold;
      hold = undefined;
      if (held) {
        held.read();
        await held.release;
      }
      return found;
    };
    // The cache's lifetime is long enough that only an eviction can end an entry in this test.
    app = await startTestApp(fixture, { stores: { ...real, apiKeys }, apiKeyCacheTtlMs: 60_000 });
  });
  afterAll(() => app?.close());

  const useKey = (key: string) => app.request("GET", "/v1/sessions", { token: key });

  /** Sends a request with `key` that reads the key and then waits until `during` has run. */
  async function lookupAcross(key: string, during: () => Promise<void>): Promise<number> {
    let release!: () => void;
    const read = new Promise<void>((readDone) => {
      hold = { read: readDone, release: new Promise<void>((r) => (release = r)) };
    });
    const inFlight = useKey(key);
    await read;
    await during();
    release();
    return (await inFlight).status;
  }

  const newKey = async (token: string) => {
    const res = await app.request("POST", "/auth/api-keys", { token, body: { name: "ci", scopes: ["sessions:read"], password: PASSWORD } });
    expect(res.status).toBe(201);
    return res.body as { id: string; key: string };
  };

  it("a key revoked while its lookup is in flight is refused on the next request", async () => {
    const user = await signup(app);
    const { id, key } = await newKey(user.accessToken);
    // The request that read the key before the revocation was sent before it: it may pass.
    const first = await lookupAcross(key, async () => {
      expect((await app.request("DELETE", `/auth/api-keys/${id}`, { token: user.accessToken })).status).toBe(204);
    });
    expect(first).toBe(200);
    const after = await useKey(key);
    expect(after.status).toBe(401);
    expect(after.body.error.code).toBe("invalid_api_key");
  });

  it("an erased user's key is refused on the next request even when a lookup was in flight during the eviction", async () => {
    const user = await signup(app);
    const { key } = await newKey(user.accessToken);
    await lookupAcross(key, async () => {
      await eraseUserData(fixture.database.db, user.user.id, [authDataRights()]);
      app.service.evictUser(user.user.id);
    });
    expect((await useKey(key)).status).toBe(401);
  });

  it("a member removed from the team while a lookup of their key was in flight is refused on the next request", async () => {
    const owner = await signup(app);
    const member = await signup(app);
    await addMember(app, owner.teamId, member.user.id, "member");
    const login = await app.request("POST", "/auth/login", { body: { email: member.email, password: PASSWORD, teamId: owner.teamId } });
    expect(login.status).toBe(200);
    const { key } = await newKey(login.body.accessToken);
    await lookupAcross(key, () => app.service.removeMember(owner.teamId, member.user.id));
    expect((await useKey(key)).status).toBe(401);
  });
});
