import { randomUUID } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import { migrateToLatest } from "../db/migrations.js";
import { HttpError } from "../http-error.js";
import { describeEachDatabase, runSlotStoreContract, separatePools, TestClock } from "../testing/index.js";
import { concurrencyLimit } from "./concurrency-limit.js";
import { limitMigrations } from "./migrations.js";
import { ConcurrencyLimitError, createKyselyRunSlotStore, createMemoryRunSlotStore, createRunSlots, RunSlotLostError, type RunSlotStore } from "./run-slots.js";
import { serve } from "./test-server.js";
import { errorStatus } from "../http-error.js";

/** A domain error as the HTTP edge answers it: its fields plus the status from the code table. */
const atEdge = (error: unknown) => ({ ...(error as object), message: (error as Error).message, status: errorStatus(error) });

runSlotStoreContract("memory", createMemoryRunSlotStore);

describe("run slot options", () => {
  it("throws a ConfigError for bad options at creation", () => {
    const store = createMemoryRunSlotStore();
    expect(() => createRunSlots({ store, limits: {} })).toThrow(ConfigError);
    expect(() => createRunSlots({ store, limits: { user: 0 } })).toThrow(ConfigError);
    expect(() => createRunSlots({ store, limits: { user: 1 }, leaseMs: 5 })).toThrow(ConfigError);
    expect(() => concurrencyLimit({ slots: {} as never })).toThrow(ConfigError);
    expect(() => concurrencyLimit({ slots: createRunSlots({ store, limits: { user: 1 } }), hold: "forever" as never })).toThrow(ConfigError);
  });

  it("keeps a live slot renewed with keepAlive and reports a lost one", async () => {
    const store = createMemoryRunSlotStore();
    const slots = createRunSlots({ store, limits: { user: 1 }, leaseMs: 300 });
    const user = randomUUID();
    const slot = await slots.acquire({ runId: randomUUID(), userId: user });
    const stop = slot.keepAlive(60);
    await new Promise((r) => setTimeout(r, 700));
    expect(await slots.active({ userId: user })).toBe(1);
    stop();
    await new Promise((r) => setTimeout(r, 400));
    expect(await slots.active({ userId: user })).toBe(0);
    // A heartbeat that finds its lease gone stops and says so.
    const lost = await new Promise<RunSlotLostError>((resolve) => slot.keepAlive(50, resolve));
    expect(lost).toBeInstanceOf(RunSlotLostError);
  });
});

describeEachDatabase("PostgreSQL run slots", (fixture) => {
  beforeAll(() => migrateToLatest(fixture.database.db, [limitMigrations]));
  runSlotStoreContract("kysely", () => createKyselyRunSlotStore(fixture.database.db));

  if (fixture.kind === "postgres") {
    describe("across processes", () => {
      const pools = separatePools(fixture, 2, { maxConnections: 8 });

      it("gives out exactly `limit` slots to 40 concurrent acquires from two pools", async () => {
        const services = pools.map((p) => createRunSlots({ store: createKyselyRunSlotStore(p.db), limits: { user: 3, team: 5 } }));
        const user = randomUUID();
        const team = randomUUID();
        const results = await Promise.allSettled(
          Array.from({ length: 40 }, (_, i) => services[i % 2]!.acquire({ runId: randomUUID(), userId: i % 4 === 0 ? randomUUID() : user, teamId: team })),
        );
        const held = results.filter((r) => r.status === "fulfilled").length;
        expect(held).toBe(5);
        expect(await services[0]!.active({ userId: user })).toBeLessThanOrEqual(3);
        expect(await services[1]!.active({ teamId: team })).toBe(5);
        expect(results.filter((r) => r.status === "rejected").every((r) => (r as PromiseRejectedResult).reason instanceof ConcurrencyLimitError)).toBe(true);
      });
    });
  }

  it("holds a slot while a response streams and frees it when the response ends or fails", async () => {
    const slots = createRunSlots({ store: createKyselyRunSlotStore(fixture.database.db), limits: { user: 1 } });
    const gates = new Map<string, () => void>();
    const app = await serve((koa) => {
      koa.use(concurrencyLimit({ slots, runId: (ctx) => String(ctx.query.run) }));
      koa.use(async (ctx) => {
        if (ctx.query.fail) throw new Error("run crashed");
        await new Promise<void>((resolve) => gates.set(String(ctx.query.run), resolve));
        ctx.body = { runId: ctx.state.runSlot?.runId };
      });
    });
    const principal = { userId: randomUUID() };
    try {
      const first = app.fetch("/?run=r1", { principal });
      while (!gates.has("r1")) await new Promise((r) => setTimeout(r, 10));
      const second = await app.fetch("/?run=r2", { principal });
      expect(second.status).toBe(429);
      expect(second.body.error).toMatchObject({ code: "too_many_concurrent_runs", details: { scope: "user", limit: 1, active: 1 } });
      gates.get("r1")!();
      expect((await first).body).toEqual({ runId: "r1" });
      await waitFor(async () => (await slots.active(principal)) === 0);
      expect((await app.fetch("/?run=r3&fail=1", { principal })).status).toBe(500);
      await waitFor(async () => (await slots.active(principal)) === 0);
      expect((await app.fetch("/", { principal: undefined })).status).toBe(401);
    } finally {
      for (const open of gates.values()) open();
      await app.close();
    }
  });

  it("keeps a slot past the response in manual mode until the host releases it", async () => {
    const slots = createRunSlots({ store: createKyselyRunSlotStore(fixture.database.db), limits: { user: 1 } });
    const app = await serve((koa) => {
      koa.use(async (ctx, next) => {
        if (ctx.method === "DELETE") {
          ctx.body = { released: await slots.release(ctx.path.slice(1)) };
          return;
        }
        await next();
      });
      koa.use(concurrencyLimit({ slots, hold: "manual" }));
      koa.use((ctx) => {
        if (ctx.query.invalid) throw new HttpError(400, "invalid_run", "No vision given");
        ctx.status = 202;
        ctx.body = { runId: ctx.state.runSlot!.runId };
      });
    });
    const principal = { userId: randomUUID() };
    try {
      // A request that fails after taking the slot gives it back.
      expect((await app.fetch("/?invalid=1", { method: "POST", principal })).status).toBe(400);
      expect(await slots.active(principal)).toBe(0);
      const started = await app.fetch("/", { method: "POST", principal });
      expect(started.status).toBe(202);
      expect((await app.fetch("/", { method: "POST", principal })).status).toBe(429);
      expect((await app.fetch(`/${started.body.runId}`, { method: "DELETE", principal })).body).toEqual({ released: true });
      expect((await app.fetch("/", { method: "POST", principal })).status).toBe(202);
    } finally {
      await app.close();
    }
  });
});

async function waitFor(check: () => Promise<boolean>, timeoutMs = 3000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}
