import { randomBytes } from "node:crypto";
import type { MessagesServer } from "@keen/agent-core/testing";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { ADMIN_EMAIL, api, createTestRepo, eventually, signup, startTestServer, TEST_DATABASE_URL, type Account } from "../testing/harness.js";
import { scriptedModel } from "../testing/model.js";

/** Reads a WebSocket stream until it closes; returns the JSON messages. */
function readWebSocket(url: string, headers: Record<string, string>): Promise<{ messages: any[]; code: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    const messages: any[] = [];
    ws.on("message", (data) => messages.push(JSON.parse(String(data))));
    ws.on("close", (code) => resolve({ messages, code }));
    ws.on("error", reject);
  });
}

function upgradeStatus(url: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers });
    ws.on("unexpected-response", (_req, res) => resolve(res.statusCode ?? 0));
    ws.on("open", () => {
      ws.close();
      resolve(101);
    });
    ws.on("error", () => resolve(-1));
  });
}

describe("two server processes on one PostgreSQL", () => {
  const schema = `t_${randomBytes(6).toString("hex")}`;
  const settings = { databaseUrl: TEST_DATABASE_URL, databaseSchema: schema };
  let model: MessagesServer;
  let a: Awaited<ReturnType<typeof startTestServer>>;
  let b: Awaited<ReturnType<typeof startTestServer>>;
  let owner: Account;

  beforeAll(async () => {
    model = await scriptedModel({ writeDelayMs: 400 });
    // A serves the API only; B only executes runs.
    a = await startTestServer({ ...settings, modelBaseUrl: model.url, localMode: true, workers: 0 });
    b = await startTestServer({ ...settings, modelBaseUrl: model.url, localMode: true, workers: 2 });
    owner = await signup(a.url);
    const admin = await signup(a.url, ADMIN_EMAIL);
    await api(a.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: owner.teamId, amount: 50_000_000, idempotencyKey: `g-${owner.teamId}` } });
  });
  afterAll(async () => {
    await a?.stop();
    await b?.stop();
    await model?.close();
    const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await client.connect();
    await client.query(`drop schema if exists "${schema}" cascade`);
    await client.query(`drop schema if exists "${schema}_jobs" cascade`);
    await client.end();
  });

  it("creates on A, executes on B, streams live over a WebSocket on A", async () => {
    const repo = await createTestRepo();
    const created = await api(a.url, "/v1/runs", { headers: owner.headers, body: { vision: "Write notes", repo: { path: repo } } });
    expect(created.status).toBe(202);
    const wsUrl = `${a.url.replace("http", "ws")}/v1/runs/${created.body.id}/stream?after=0`;
    const { messages, code } = await readWebSocket(wsUrl, owner.headers);
    expect(code).toBe(1000);
    const events = messages.filter((m) => m.type !== "stream.end");
    expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1));
    expect(events.at(-1).type).toBe("run.completed");
    expect(messages.at(-1)).toEqual({ type: "stream.end", status: "succeeded" });
    const run = await api(a.url, `/v1/runs/${created.body.id}`, { headers: owner.headers });
    expect(run.body.status).toBe("succeeded");
    // A resumed WebSocket from a cursor gets only the rest.
    const tail = await readWebSocket(`${a.url.replace("http", "ws")}/v1/runs/${created.body.id}/stream?after=${events.length - 2}`, owner.headers);
    expect(tail.messages.filter((m) => m.type !== "stream.end").map((m) => m.seq)).toEqual([events.length - 1, events.length]);
  });

  it("checks auth and tenancy on the WebSocket upgrade", async () => {
    const repo = await createTestRepo();
    const created = await api(a.url, "/v1/runs", { headers: owner.headers, body: { vision: "Write notes", repo: { path: repo } } });
    const wsUrl = `${a.url.replace("http", "ws")}/v1/runs/${created.body.id}/stream`;
    expect(await upgradeStatus(wsUrl, {})).toBe(401);
    expect(await upgradeStatus(wsUrl, { authorization: "Bearer nonsense" })).toBe(401);
    const stranger = await signup(a.url);
    expect(await upgradeStatus(wsUrl, stranger.headers)).toBe(404);
    expect(await upgradeStatus(`${wsUrl}?after=-1`, owner.headers)).toBe(400);
    await eventually(async () => (await api(a.url, `/v1/runs/${created.body.id}`, { headers: owner.headers })).body.status === "succeeded", 60_000, "run end");
  });

  it("cancels a running run: it stops, settles what it used, and frees its slot", async () => {
    // C (with a slow model) is the only worker left, so it is the one that runs this.
    await b.stop();
    const slowModel = await scriptedModel({ writeDelayMs: 4_000 });
    const c = await startTestServer({ ...settings, modelBaseUrl: slowModel.url, localMode: true, workers: 1 });
    try {
      const repo = await createTestRepo();
      const created = await api(c.url, "/v1/runs", { headers: owner.headers, body: { vision: "Write notes slowly", repo: { path: repo } } });
      const runId = created.body.id as string;
      // Wait until some tokens were used, so the settlement is more than nothing.
      await eventually(async () => {
        const run = await api(c.url, `/v1/runs/${runId}`, { headers: owner.headers });
        return run.body.status === "running" && run.body.agents.length > 0;
      }, 60_000, "run to start");
      const cancel = await api(c.url, `/v1/runs/${runId}/cancel`, { method: "POST", headers: owner.headers });
      expect(cancel.status).toBe(202);
      const final = await eventually(async () => {
        const run = await api(c.url, `/v1/runs/${runId}`, { headers: owner.headers });
        return ["cancelled", "failed", "succeeded"].includes(run.body.status) ? run.body : undefined;
      }, 60_000, "run to stop");
      expect(final.status).toBe("cancelled");
      expect(typeof final.cost).toBe("number");
      const slots = await c.server.database.db.selectFrom("run_slots").selectAll().where("run_id", "=", runId).execute();
      expect(slots).toEqual([]);
      const again = await api(c.url, `/v1/runs/${runId}/cancel`, { method: "POST", headers: owner.headers });
      expect(again.status).toBe(409);
    } finally {
      await c.stop();
      await slowModel.close();
    }
  });
});
