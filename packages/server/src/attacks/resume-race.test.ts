import { startMessagesServer, type MessagesServer, type ScriptedReply } from "@keen/agent-core/testing";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ADMIN_EMAIL, api, createTestRepo, describeEachDatabase, eventually, readSse, signup, useTestServer } from "../testing/harness.js";

const RESERVE = 1_000_000;
const GRANTED = 10_000_000;

/**
 * Twenty resumes of one interrupted run at once. A resume's slot (per run) and hold (idempotent
 * per run attempt) are the same for every concurrent caller, so the callers that lose the race
 * must not give back what the winner now holds: its hold, and its concurrency slot.
 */
describeEachDatabase("attack: concurrent resumes of one run", (database) => {
  let model: MessagesServer;
  // Overloaded at once while the run first goes; slowly overloaded once it is resumed, so the
  // resumed attempt stays running for a while and then ends interrupted again.
  let answer: ScriptedReply = { fault: { status: 529 } };
  beforeAll(async () => {
    model = await startMessagesServer({ policy: () => answer });
  });
  afterAll(async () => {
    await model.close();
  });
  const t = useTestServer(() => ({ ...database.settings, modelBaseUrl: model.url, localMode: true, modelMaxRetries: 0, maxRunsPerUser: 1, runReserve: RESERVE, rateLimit: 10_000 }));

  it("exactly one resume wins; the run keeps its hold and its slot while it runs, and the ledger balances", async () => {
    const owner = await signup(t.url);
    const admin = await signup(t.url, ADMIN_EMAIL);
    expect((await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: owner.teamId, amount: GRANTED, idempotencyKey: `g-${owner.teamId}` } })).status).toBe(201);
    const repo = await createTestRepo({ "README.md": "# app\n" });
    const created = await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "Write the notes file", repo: { path: repo } } });
    expect(created.status).toBe(202);
    const runId = created.body.id as string;
    const first = await readSse(`${t.url}/v1/runs/${runId}/events`, owner.headers, (f) => f.event === "end");
    expect(JSON.parse(first.frames.at(-1)!.data).status).toBe("interrupted");
    const balance = async () => (await api(t.url, "/v1/credits", { headers: owner.headers })).body.balance as number;
    const before = await balance();

    answer = { fault: { status: 529, delayMs: 4_000 } };
    const resumes = await Promise.all(Array.from({ length: 20 }, () => api(t.url, `/v1/runs/${runId}/resume`, { method: "POST", headers: owner.headers })));
    expect(resumes.filter((r) => r.status === 202)).toHaveLength(1);
    for (const lost of resumes.filter((r) => r.status !== 202)) expect(lost.body.error.code).toBe("run_not_resumable");

    // While the resumed attempt goes: its hold is still held and its slot still taken.
    await eventually(async () => (await api(t.url, `/v1/runs/${runId}`, { headers: owner.headers })).body.status === "running", 20_000, "the resumed run to start");
    expect(await balance()).toBe(before - RESERVE);
    const another = await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "Another", repo: { path: repo } } });
    expect(another.status).toBe(429);
    expect(another.body.error.code).toBe("too_many_concurrent_runs");

    const rest = await readSse(`${t.url}/v1/runs/${runId}/events`, owner.headers, (f) => f.event === "end");
    expect(JSON.parse(rest.frames.at(-1)!.data).status).toBe("interrupted");
    expect(await balance()).toBe(before);
    expect((await t.server.ledger.verify()).ok).toBe(true);
  }, 60_000);
});
