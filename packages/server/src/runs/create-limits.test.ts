import { createKyselyBudgets } from "@keen/gateway-kit";
import { expect, it } from "vitest";
import { ADMIN_EMAIL, api, describeEachDatabase, signup, useTestServer, type Account } from "../testing/harness.js";

describeEachDatabase("run creation limits", (database) => {
  // No workers: created runs stay queued and keep their slot and hold.
  const t = useTestServer(() => ({ ...database.settings, workers: 0, maxRunsPerUser: 2, runReserve: 1_000_000, modelBaseUrl: "http://127.0.0.1:9" }));
  const repo = { url: "https://git.example/app.git" };

  async function funded(amount: number): Promise<Account> {
    const owner = await signup(t.url);
    const admin = await signup(t.url, ADMIN_EMAIL).catch(() => undefined);
    const adminAccount = admin ?? (await login(ADMIN_EMAIL));
    const grant = await api(t.url, "/v1/admin/credits/grant", { headers: adminAccount.headers, body: { teamId: owner.teamId, amount, idempotencyKey: `g-${owner.teamId}` } });
    expect(grant.status).toBe(201);
    return owner;
  }

  async function login(email: string): Promise<Account> {
    const res = await api(t.url, "/v1/auth/login", { body: { email, password: "correct horse battery staple" } });
    return { userId: "", teamId: res.body.teamId, accessToken: res.body.accessToken, headers: { authorization: `Bearer ${res.body.accessToken}` } };
  }

  it("the same create 20 times at once: exactly the slot limit is accepted, the rest hold nothing", async () => {
    const owner = await funded(10_000_000);
    const results = await Promise.all(
      Array.from({ length: 20 }, () => api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "Add a README", repo } })),
    );
    const accepted = results.filter((r) => r.status === 202);
    const refused = results.filter((r) => r.status !== 202);
    expect(accepted).toHaveLength(2);
    expect(new Set(refused.map((r) => r.status))).toEqual(new Set([429]));
    expect(refused[0]!.body.error.code).toBe("too_many_concurrent_runs");
    // Two holds of 1 credit each, nothing else.
    expect((await api(t.url, "/v1/credits", { headers: owner.headers })).body.balance).toBe(8_000_000);
    expect((await api(t.url, "/v1/runs", { headers: owner.headers })).body.runs).toHaveLength(2);
    // Cancelling a queued run returns its hold and frees its slot.
    const cancelled = await api(t.url, `/v1/runs/${accepted[0]!.body.id}/cancel`, { method: "POST", headers: owner.headers });
    expect(cancelled.status).toBe(202);
    expect(cancelled.body.status).toBe("cancelled");
    expect((await api(t.url, "/v1/credits", { headers: owner.headers })).body.balance).toBe(9_000_000);
    const next = await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "Add a README", repo } });
    expect(next.status).toBe(202);
  });

  it("without enough credits: 402, and the slot is given back", async () => {
    const owner = await funded(1_500_000);
    const first = await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "One", repo } });
    expect(first.status).toBe(202);
    const second = await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "Two", repo } });
    expect(second.status).toBe(402);
    expect((await api(t.url, "/v1/credits", { headers: owner.headers })).body.balance).toBe(500_000);
    // The refused run took no slot: after a grant, a run fits beside the first.
    const admin = await login(ADMIN_EMAIL);
    await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: owner.teamId, amount: 1_000_000, idempotencyKey: `g2-${owner.teamId}` } });
    const third = await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "Three", repo } });
    expect(third.status).toBe(202);
  });

  it("over the team's budget: 402 budget_exceeded naming it, the wallet holds nothing, and a cancel gives the budget back too", async () => {
    const owner = await funded(10_000_000);
    // Budgets straight from the service: the server has no budget routes in this suite.
    const budgets = createKyselyBudgets(t.server.database.db);
    const team = { kind: "team" as const, id: owner.teamId };
    await budgets.setBudget({ scope: team, period: "monthly", limit: 1_500_000 });
    const first = await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "One", repo } });
    expect(first.status).toBe(202);
    expect((await budgets.status([team]))[0]!.spent).toBe(1_000_000);
    const second = await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "Two", repo } });
    expect(second.status).toBe(402);
    expect(second.body.error).toMatchObject({ code: "budget_exceeded", details: { scope: team, period: "monthly", remaining: 500_000 } });
    // All or nothing: the refused run took no credits and no slot.
    expect((await api(t.url, "/v1/credits", { headers: owner.headers })).body.balance).toBe(9_000_000);
    expect((await api(t.url, "/v1/runs", { headers: owner.headers })).body.runs).toHaveLength(1);
    // Cancelling the queued run releases wallet and budget together.
    expect((await api(t.url, `/v1/runs/${first.body.id}/cancel`, { method: "POST", headers: owner.headers })).status).toBe(202);
    expect((await api(t.url, "/v1/credits", { headers: owner.headers })).body.balance).toBe(10_000_000);
    expect((await budgets.status([team]))[0]!.spent).toBe(0);
    expect((await t.server.ledger.verify()).ok).toBe(true);
  });

  it("pages the run list with a cursor, newest first, and refuses a forged cursor", async () => {
    const owner = await funded(10_000_000);
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) ids.push((await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: `Run ${i}`, repo } })).body.id);
    const first = await api(t.url, "/v1/runs?limit=1", { headers: owner.headers });
    expect(first.body.runs.map((r: { id: string }) => r.id)).toEqual([ids[1]]);
    const second = await api(t.url, `/v1/runs?limit=1&cursor=${first.body.nextCursor}`, { headers: owner.headers });
    expect(second.body.runs.map((r: { id: string }) => r.id)).toEqual([ids[0]]);
    expect(second.body.nextCursor).toBeNull();
    for (const bad of ["garbage", Buffer.from("2020-01-01|'; drop table runs").toString("base64url")]) {
      const res = await api(t.url, `/v1/runs?cursor=${bad}`, { headers: owner.headers });
      expect(res.status).toBe(400);
    }
    for (const limit of ["0", "-1", "1.5", "101", "NaN"]) {
      expect((await api(t.url, `/v1/runs?limit=${limit}`, { headers: owner.headers })).status, limit).toBe(400);
    }
  });
});
