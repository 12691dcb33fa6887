/**
 * Attack: sign up first with an address listed in KEEN_ADMIN_EMAILS, without owning it, and use
 * the admin rights it used to carry (credit grants, `repo.path` runs on the server's disk).
 * A listed address counts only once it is verified; until then the account is answered exactly
 * as any non-admin is.
 */
import { expect, it } from "vitest";
import { removeSquattingAccount, verifyAccountEmail } from "../admin-accounts.js";
import { ADMIN_EMAIL, api, createTestRepo, describeEachDatabase, signup, useTestServer, type Account } from "../testing/harness.js";

/** Sign-up straight through the API: nothing verifies the address afterwards. */
async function squat(url: string, email: string): Promise<Account> {
  const res = await api(url, "/v1/auth/signup", { body: { email, password: "correct horse battery staple" } });
  expect(res.status).toBe(201);
  return { userId: res.body.user.id, teamId: res.body.teamId, accessToken: res.body.accessToken, headers: { authorization: `Bearer ${res.body.accessToken}` } };
}

describeEachDatabase("admin rights from an unverified listed email", (choice) => {
  // No workers: a run that is admitted stays queued; only admission is under test.
  const OPS_EMAIL = "ops@keen.test";
  const t = useTestServer(() => ({ ...choice.settings, workers: 0, adminEmails: [ADMIN_EMAIL, OPS_EMAIL] }));

  it("gives a squatter of a listed address no admin route, answered as a non-admin is", async () => {
    const victim = await signup(t.url);
    const outsider = await signup(t.url);
    // Another spelling of the listed address is the same address, and as unverified.
    const squatter = await squat(t.url, `  ${ADMIN_EMAIL.toUpperCase()} `);

    const me = await api(t.url, "/v1/me", { headers: squatter.headers });
    expect(me.status).toBe(200);
    expect(me.body.user.email).toBe(ADMIN_EMAIL);
    expect(me.body.admin).toBe(false);

    const grant = (who: Account) =>
      api(t.url, "/v1/admin/credits/grant", { headers: who.headers, body: { teamId: squatter.teamId, amount: 1_000_000_000, idempotencyKey: `squat-${who.userId}` } });
    const squatted = await grant(squatter);
    const plain = await grant(outsider);
    expect(squatted.status).toBe(404);
    expect(squatted.body.error.code).toBe("not_found");
    expect({ status: squatted.status, code: squatted.body.error.code }).toEqual({ status: plain.status, code: plain.body.error.code });
    expect((await api(t.url, "/v1/credits", { headers: squatter.headers })).body.balance).toBe(0);

    const repo = await createTestRepo();
    const run = (who: Account) => api(t.url, "/v1/runs", { headers: who.headers, body: { vision: "Read the host", repo: { path: repo } } });
    const squattedRun = await run(squatter);
    const plainRun = await run(outsider);
    expect(squattedRun.status).toBe(403);
    expect(squattedRun.body.error.code).toBe("forbidden");
    expect({ status: squattedRun.status, code: squattedRun.body.error.code }).toEqual({ status: plainRun.status, code: plainRun.body.error.code });

    // An API key minted by the squatter carries no more than its session did.
    const key = await api(t.url, "/v1/auth/api-keys", { headers: squatter.headers, body: { name: "squat", scopes: ["sessions:read", "sessions:write"], password: "correct horse battery staple" } });
    expect(key.status).toBe(201);
    const byKey = await api(t.url, "/v1/runs", { headers: { authorization: `Bearer ${key.body.key}` }, body: { vision: "Read the host", repo: { path: repo } } });
    expect(byKey.status).toBe(403);
    expect(byKey.body.error.code).toBe("forbidden");
    expect(victim.userId).not.toBe(squatter.userId);
  });

  it("counts a listed address once the operator verified it; an erased squatter frees the address", async () => {
    const squatter = await squat(t.url, OPS_EMAIL);
    expect((await api(t.url, "/v1/me", { headers: squatter.headers })).body.admin).toBe(false);

    const report = await removeSquattingAccount(t.server.database.db, t.server.config, OPS_EMAIL);
    expect(report.userId).toBe(squatter.userId);
    expect(report.contributors).toContain("auth");
    expect((await api(t.url, "/v1/me", { headers: squatter.headers })).status).toBe(401);
    const trail = await (t.server.database.db as any)
      .selectFrom("audit_log")
      .select(["action", "actor_id"])
      .where("target", "=", `user:${squatter.userId}`)
      .where("action", "in", ["privacy.erase", "admin.remove_user"])
      .execute();
    expect(trail.map((r: { action: string }) => r.action).sort()).toEqual(["admin.remove_user", "privacy.erase"]);

    // The address is free again; its owner signs up, and is no admin until verified.
    const owner = await squat(t.url, OPS_EMAIL);
    expect(owner.userId).not.toBe(squatter.userId);
    expect((await api(t.url, "/v1/me", { headers: owner.headers })).body.admin).toBe(false);
    const verified = await verifyAccountEmail(t.server.database.db, t.server.config, OPS_EMAIL.toUpperCase());
    expect(verified).toMatchObject({ userId: owner.userId, alreadyVerified: false, admin: true });
    expect((await api(t.url, "/v1/me", { headers: owner.headers })).body.admin).toBe(true);
    const grant = await api(t.url, "/v1/admin/credits/grant", { headers: owner.headers, body: { teamId: owner.teamId, amount: 1_000_000, idempotencyKey: `ops-${owner.userId}` } });
    expect(grant.status).toBe(201);

    // A verified holder is not a squatter: the cleanup leaves them alone.
    await expect(removeSquattingAccount(t.server.database.db, t.server.config, OPS_EMAIL)).rejects.toMatchObject({ code: "account_verified" });
    expect((await api(t.url, "/v1/me", { headers: owner.headers })).status).toBe(200);
  });
});
