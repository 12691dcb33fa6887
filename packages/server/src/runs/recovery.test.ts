import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { MessagesServer } from "@keen/agent-core/testing";
import { execa, type ResultPromise } from "execa";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ADMIN_EMAIL, api, createTestRepo, eventually, readSse, signup, startTestServer, TEST_DATABASE_URL } from "../testing/harness.js";
import { scriptedModel } from "../testing/model.js";

const root = fileURLToPath(new URL("../../../../", import.meta.url));

describe("a worker killed mid-run", () => {
  const schema = `t_${randomBytes(6).toString("hex")}`;
  let model: MessagesServer;
  let dataDir: string;
  let child: ResultPromise | undefined;

  beforeAll(async () => {
    model = await scriptedModel({ writeDelayMs: 3_000 });
    dataDir = await mkdtemp(join(tmpdir(), "keen-recovery-"));
  });
  afterAll(async () => {
    child?.kill("SIGKILL");
    await model.close();
    await rm(dataDir, { recursive: true, force: true });
    const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await client.connect();
    await client.query(`drop schema if exists "${schema}" cascade`);
    await client.query(`drop schema if exists "${schema}_jobs" cascade`);
    await client.end();
  });

  it("is resumed from its snapshot by another process and settled exactly once", async () => {
    const workspacesDir = join(dataDir, "workspaces");
    child = execa("node", ["--import", "tsx", "packages/server/src/testing/serve-process.ts"], {
      cwd: root,
      reject: false,
      extendEnv: false,
      env: {
        PATH: process.env.PATH!,
        DATABASE_URL: TEST_DATABASE_URL,
        KEEN_DATABASE_SCHEMA: schema,
        KEEN_DATA_DIR: join(dataDir, "a"),
        KEEN_WORKSPACES_DIR: workspacesDir,
        ANTHROPIC_BASE_URL: model.url,
        ANTHROPIC_API_KEY: "test",
        KEEN_MODEL: "claude-haiku-4-5",
        KEEN_LOCAL_MODE: "true",
        KEEN_ADMIN_EMAILS: ADMIN_EMAIL,
        KEEN_HEARTBEAT_MS: "200",
        PORT: "0",
        LOG_LEVEL: "silent",
      },
    });
    const url = await new Promise<string>((resolve, reject) => {
      let text = "";
      child!.stdout!.on("data", (chunk) => {
        text += String(chunk);
        const match = /ready (http:\/\/\S+)/.exec(text);
        if (match) resolve(match[1]!);
      });
      void child!.then((r) => reject(new Error(`server exited: ${r.stderr}`)));
    });
    const owner = await signup(url);
    const admin = await signup(url, ADMIN_EMAIL);
    const granted = 20_000_000;
    await api(url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: owner.teamId, amount: granted, idempotencyKey: `g-${owner.teamId}` } });
    const repo = await createTestRepo();
    const created = await api(url, "/v1/runs", { headers: owner.headers, body: { vision: "Write notes", repo: { path: repo } } });
    expect(created.status).toBe(202);
    const runId = created.body.id as string;

    // Kill -9 once the run has checkpointed a snapshot and is waiting on the (slow) model.
    const db = new pg.Client({ connectionString: TEST_DATABASE_URL, options: `-c search_path=${schema}` });
    await db.connect();
    try {
      await eventually(async () => {
        const { rows } = await db.query("select status, snapshot is not null as snap from runs where id = $1", [runId]);
        return rows[0]?.status === "running" && rows[0]?.snap;
      }, 60_000, "a checkpoint");
      child.kill("SIGKILL");
      await child;
      child = undefined;
      const before = await db.query("select attempt, worker_id from runs where id = $1", [runId]);
      expect(before.rows[0].attempt).toBe(1);

      // Another process takes over once the heartbeat is stale.
      const b = await startTestServer({ databaseUrl: TEST_DATABASE_URL, databaseSchema: schema, modelBaseUrl: model.url, localMode: true, workspacesDir, staleAfterMs: 1_000 });
      try {
        const final = await eventually(async () => {
          const run = await api(b.url, `/v1/runs/${runId}`, { headers: owner.headers });
          return ["succeeded", "failed", "cancelled"].includes(run.body.status) ? run.body : undefined;
        }, 90_000, "the resumed run to finish");
        expect(final.status).toBe("succeeded");
        const after = await db.query("select attempt, worker_id from runs where id = $1", [runId]);
        expect(after.rows[0].attempt).toBe(2);
        expect(after.rows[0].worker_id).toBe(b.server.worker.workerId);

        // One settlement, for the price the run row records; the ledger still balances.
        const { rows } = await db.query("select reservation_id from runs where id = $1", [runId]);
        const hold = await b.server.spend.get(rows[0].reservation_id);
        expect(hold.settlement).toMatchObject({ status: "settled", charged: final.cost });
        const reservation = await b.server.ledger.getReservation(hold.reservationId);
        expect(reservation.status).toBe("settled");
        expect(reservation.charged).toBe(final.cost);
        expect((await api(b.url, "/v1/credits", { headers: owner.headers })).body.balance).toBe(granted - final.cost);
        expect((await b.server.ledger.verify()).ok).toBe(true);

        // The event log stayed gap-free across the two workers.
        const replay = await readSse(`${b.url}/v1/runs/${runId}/events`, owner.headers, (f) => f.event === "end");
        const ids = replay.frames.filter((f) => f.event !== "end").map((f) => Number(f.id));
        expect(ids).toEqual(ids.map((_, i) => i + 1));
        expect(JSON.parse(replay.frames.at(-2)!.data).type).toBe("run.completed");
      } finally {
        await b.stop();
      }
    } finally {
      await db.end();
    }
  }, 240_000);

  it("on a graceful stop, hands a running run back checkpointed; the next server finishes it", async () => {
    const settings = { databaseUrl: TEST_DATABASE_URL, databaseSchema: schema, modelBaseUrl: model.url, localMode: true, workspacesDir: join(dataDir, "shared") };
    const a = await startTestServer({ ...settings, workers: 1 });
    const owner = await signup(a.url);
    // Credits straight from the ledger: this suite's admin was made in the first test.
    const wallet = await a.server.ledger.openWallet({ teamId: owner.teamId });
    await a.server.ledger.grant({ account: wallet.id, amount: 20_000_000, idempotencyKey: `g-${owner.teamId}` });
    const repo = await createTestRepo();
    const created = await api(a.url, "/v1/runs", { headers: owner.headers, body: { vision: "Write notes", repo: { path: repo } } });
    const runId = created.body.id as string;
    const db = a.server.database.db;
    await eventually(async () => {
      const row = await db.selectFrom("runs").select(["status", "snapshot"]).where("id", "=", runId).executeTakeFirst();
      return row?.status === "running" && row.snapshot !== null;
    }, 60_000, "a checkpoint");
    const stopping = Date.now();
    await a.stop();
    expect(Date.now() - stopping).toBeLessThan(10_000);

    const b = await startTestServer({ ...settings, workers: 1 });
    try {
      const handedBack = await b.server.database.db.selectFrom("runs").select(["status"]).where("id", "=", runId).executeTakeFirstOrThrow();
      // Handed back (or already taken by b's worker), never finished by the stopping server.
      expect(["queued", "running"]).toContain(handedBack.status);
      const final = await eventually(async () => {
        const run = await api(b.url, `/v1/runs/${runId}`, { headers: owner.headers });
        return ["succeeded", "failed", "cancelled"].includes(run.body.status) ? run.body : undefined;
      }, 90_000, "the handed-back run to finish");
      expect(final.status).toBe("succeeded");
      const row = await b.server.database.db.selectFrom("runs").select(["attempt", "reservation_id"]).where("id", "=", runId).executeTakeFirstOrThrow();
      expect(row.attempt).toBe(2);
      const hold = await b.server.spend.get(row.reservation_id!);
      expect(hold.settlement).toMatchObject({ status: "settled", charged: final.cost });
      const reservation = await b.server.ledger.getReservation(hold.reservationId);
      expect(reservation.charged).toBe(final.cost);
      expect((await api(b.url, "/v1/credits", { headers: owner.headers })).body.balance).toBe(20_000_000 - final.cost);
    } finally {
      await b.stop();
    }
  }, 240_000);
});
