import { expect, it } from "vitest";
import { ADMIN_EMAIL, api, describeEachDatabase, signup, useTestServer } from "../testing/harness.js";

const RESERVE = 1_000_000;

/**
 * Credits under replay and concurrency: one grant key sent 30 times at once, 50 run creates at
 * once against a wallet that holds three runs' reservations (and a slot limit far above that),
 * 20 cancels and 20 deletes of one run at once.
 */
describeEachDatabase("attack: credits under concurrency", (database) => {
  const t = useTestServer(() => ({ ...database.settings, workers: 0, modelBaseUrl: "http://127.0.0.1:9", maxRunsPerUser: 100, runReserve: RESERVE, rateLimit: 10_000 }));

  it("grants once, never holds more than the wallet has, and releases a cancelled run's hold once", async () => {
    const owner = await signup(t.url);
    const admin = await signup(t.url, ADMIN_EMAIL);
    const grants = await Promise.all(Array.from({ length: 30 }, () => api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: owner.teamId, amount: 3 * RESERVE, idempotencyKey: "one-grant-key" } })));
    expect(grants.every((g) => g.status === 201)).toBe(true);
    expect(new Set(grants.map((g) => g.body.transactionId)).size).toBe(1);
    const balance = async () => (await api(t.url, "/v1/credits", { headers: owner.headers })).body.balance as number;
    expect(await balance()).toBe(3 * RESERVE);
    // The same key with another amount is a conflict, not a second grant.
    const other = await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: owner.teamId, amount: 5, idempotencyKey: "one-grant-key" } });
    expect(other.status).toBe(409);
    expect(other.body.error.code).toBe("idempotency_conflict");

    const creates = await Promise.all(Array.from({ length: 50 }, (_, i) => api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: `Run ${i}`, repo: { url: "https://git.example/app.git" } } })));
    const accepted = creates.filter((c) => c.status === 202);
    expect(accepted).toHaveLength(3);
    expect(new Set(creates.filter((c) => c.status !== 202).map((c) => c.body.error.code))).toEqual(new Set(["insufficient_credits"]));
    expect(await balance()).toBe(0);
    expect((await api(t.url, "/v1/runs?limit=100", { headers: owner.headers })).body.runs).toHaveLength(3);

    const runId = accepted[0]!.body.id as string;
    const cancels = await Promise.all(Array.from({ length: 20 }, () => api(t.url, `/v1/runs/${runId}/cancel`, { method: "POST", headers: owner.headers })));
    expect(cancels.filter((c) => c.status === 202)).toHaveLength(1);
    expect(new Set(cancels.filter((c) => c.status !== 202).map((c) => c.body.error.code))).toEqual(new Set(["run_not_cancellable"]));
    expect(await balance()).toBe(RESERVE);
    const deletes = await Promise.all(Array.from({ length: 20 }, () => api(t.url, `/v1/runs/${runId}`, { method: "DELETE", headers: owner.headers })));
    expect(deletes.filter((d) => d.status === 200)).toHaveLength(1);
    for (const refused of deletes.filter((d) => d.status !== 200)) expect([404, 409]).toContain(refused.status);
    expect(await balance()).toBe(RESERVE);
    expect((await t.server.ledger.verify()).ok).toBe(true);
  });
});
