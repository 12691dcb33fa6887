import type { Database } from "@keen/gateway-kit";
import type { Kysely, KyselyPlugin } from "kysely";
import { afterAll, beforeAll, expect, it } from "vitest";
import { migrateServer } from "../db/migrations.js";
import type { ServerTables } from "../db/tables.js";
import { describeEachDatabase, openTestDatabase } from "../testing/harness.js";
import { localEventBus, postgresEventBus, type EventBus, type StoredEvent } from "./event-bus.js";
import { RunEventLog, RunEventWriter } from "./event-log.js";
import { followRun } from "./follow.js";

async function insertRun(db: Kysely<ServerTables>, id: string): Promise<void> {
  await db
    .insertInto("runs")
    .values({
      id, team_id: "t", user_id: "u", vision: "v", repo: "{}", options: "{}", model: "m", status: "running", snapshot: null, reservation_id: null,
      charged: null, usage: null, error: null, summary: null, base_commit: null, head_commit: null, branch: null, worker_id: null,
      heartbeat_at: null, created_at: new Date(), started_at: null, finished_at: null,
    })
    .execute();
}

const event = (i: number) => ({ type: "model.text", agentId: "root", at: new Date().toISOString(), text: `event ${i}` });

describeEachDatabase("followRun", (choice) => {
  let database: Database;
  let db: Kysely<ServerTables>;
  let bus: EventBus;
  let remoteBus: EventBus;
  beforeAll(async () => {
    const settings = choice.settings;
    database = await openTestDatabase(choice);
    db = database.db as Kysely<ServerTables>;
    await migrateServer(db);
    bus = settings.databaseUrl ? await postgresEventBus({ url: settings.databaseUrl, schema: settings.databaseSchema! }) : localEventBus();
    // On PostgreSQL a second bus stands in for another server process (notices only, no events in memory).
    remoteBus = settings.databaseUrl ? await postgresEventBus({ url: settings.databaseUrl, schema: settings.databaseSchema! }) : bus;
  });
  afterAll(async () => {
    await bus.close();
    if (remoteBus !== bus) await remoteBus.close();
    await database.close();
  });

  async function produce(runId: string, count: number, finish = true): Promise<void> {
    const log = new RunEventLog(db);
    const writer = new RunEventWriter(runId, await log.nextSeq(runId), log, bus);
    for (let i = 0; i < count; i++) {
      writer.write(event(i));
      if (i % 50 === 0) await new Promise((r) => setImmediate(r));
    }
    await writer.flush();
    if (finish) {
      await db.updateTable("runs").set({ status: "succeeded" }).where("id", "=", runId).execute();
      await bus.publish({ runId, lastSeq: writer.lastSeq, ended: true });
    }
  }

  async function collect(runId: string, options: { after?: number; buffer: number; delayMs?: number; viaRemote?: boolean }): Promise<StoredEvent[]> {
    const seen: StoredEvent[] = [];
    for await (const e of followRun(new RunEventLog(db), options.viaRemote ? remoteBus : bus, runId, { after: options.after ?? 0, buffer: options.buffer, pollMs: 5_000 })) {
      seen.push(e);
      if (options.delayMs && seen.length % 25 === 0) await new Promise((r) => setTimeout(r, options.delayMs));
    }
    return seen;
  }

  it("replays then follows live, gap-free and in order, for a fast and a slow follower at once", async () => {
    const runId = "run_follow_1";
    await insertRun(db, runId);
    await produce(runId, 100, false);
    const fast = collect(runId, { buffer: 1000 });
    // A tiny buffer and a slow reader: it must fall back to the table and still lose nothing.
    const slow = collect(runId, { buffer: 3, delayMs: 5 });
    const remote = collect(runId, { buffer: 1000, viaRemote: true });
    await produce(runId, 900);
    for (const seen of await Promise.all([fast, slow, remote])) {
      expect(seen.map((e) => e.seq)).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1));
    }
  });

  it("shares one table reader among a run's followers: reads grow with batches, not with followers x batches", async () => {
    const runId = "run_follow_shared";
    await insertRun(db, runId);
    await produce(runId, 10, false);
    let selects = 0;
    const counting: KyselyPlugin = {
      transformQuery(args) {
        if (args.node.kind === "SelectQueryNode") selects++;
        return args.node;
      },
      transformResult: async (args) => args.result,
    };
    // One log for every follower, as a server has; on PostgreSQL they listen on another process's bus.
    const log = new RunEventLog(db.withPlugin(counting));
    const followersBus = remoteBus;
    const followers = 40;
    const batches = 15;
    const perBatch = 20;
    const total = 10 + batches * perBatch;
    // A short safety poll, and an idle spell below: the poll too must be paid once per run, not per follower.
    const pollMs = 25;
    const started = Date.now();
    const follow = async (buffer: number, delayMs = 0) => {
      const seen: number[] = [];
      for await (const e of followRun(log, followersBus, runId, { after: 0, buffer, pollMs })) {
        seen.push(e.seq);
        if (delayMs && seen.length % 10 === 0) await new Promise((r) => setTimeout(r, delayMs));
      }
      return seen;
    };
    const fast = Array.from({ length: followers }, () => follow(1000));
    // A lagging follower: a buffer smaller than one batch, and slow to read.
    const lagging = follow(5, 3);
    const writeLog = new RunEventLog(db);
    const writer = new RunEventWriter(runId, await writeLog.nextSeq(runId), writeLog, bus);
    for (let b = 0; b < batches; b++) {
      for (let i = 0; i < perBatch; i++) writer.write(event(i));
      await writer.flush();
      await new Promise((r) => setTimeout(r, 5));
    }
    await new Promise((r) => setTimeout(r, 10 * pollMs));
    await db.updateTable("runs").set({ status: "succeeded" }).where("id", "=", runId).execute();
    await bus.publish({ runId, lastSeq: writer.lastSeq, ended: true });
    const expected = Array.from({ length: total }, (_, i) => i + 1);
    for (const seen of await Promise.all(fast)) expect(seen).toEqual(expected);
    expect(await lagging).toEqual(expected);
    // Each poll is two reads (state and page); counted from the time that really passed.
    const polls = Math.ceil((Date.now() - started) / pollMs) + 1;
    // Replay costs each follower a read or two, and the lagging one its own catch-up pages
    // (at most one per batch it fell behind on); the live events themselves cost O(1) reads per
    // batch, and the poll O(1) per tick, for all of them together. One reader per follower would
    // cost followers x (batches or polls).
    expect(selects).toBeLessThanOrEqual(3 * (followers + 1) + 4 * batches + 2 * polls + 10);
  });

  it("starts after a cursor and ends at once for a finished run", async () => {
    const runId = "run_follow_2";
    await insertRun(db, runId);
    await produce(runId, 30);
    const seen = await collect(runId, { after: 17, buffer: 10 });
    expect(seen.map((e) => e.seq)).toEqual(Array.from({ length: 13 }, (_, i) => i + 18));
  });

  it("refuses a second event with a seq already used", async () => {
    const runId = "run_follow_3";
    await insertRun(db, runId);
    const log = new RunEventLog(db);
    const stored: StoredEvent = { runId, seq: 1, type: "x", agentId: "root", at: new Date().toISOString(), payload: {} };
    await log.append([stored]);
    await expect(log.append([stored])).rejects.toThrow();
    expect((await log.page(runId, 0, 10)).length).toBe(1);
  });

  it("redacts secrets before an event is stored", async () => {
    const runId = "run_follow_4";
    await insertRun(db, runId);
    const log = new RunEventLog(db);
    const writer = new RunEventWriter(runId, 1, log, bus);
    writer.write({ type: "tool.completed", agentId: "root", at: new Date().toISOString(), output: "token ghp_abcdefghijklmnopqrstuvwxyz0123456789" });
    await writer.flush();
    const [stored] = await log.page(runId, 0, 10);
    expect(JSON.stringify(stored!.payload)).not.toContain("ghp_abcdefghijklmnopqrstuvwxyz0123456789");
  });
});
