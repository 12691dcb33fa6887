import { randomUUID } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import { migrateToLatest } from "../db/migrations.js";
import { describeEachDatabase, separatePools } from "../testing/each-database.js";
import { anomalyGuard, createAnomalyDetector, createKyselyAnomalyStateStore, type AnomalyEvent } from "./anomaly.js";
import { limitMigrations } from "./migrations.js";
import { TestClock } from "../testing/index.js";
import { serve } from "./test-server.js";
import { errorStatus } from "../http-error.js";

/** A domain error as the HTTP edge answers it: its fields plus the status from the code table. */
const atEdge = (error: unknown) => ({ ...(error as object), message: (error as Error).message, status: errorStatus(error) });

const MINUTE = 60_000;

/** `perMinute[i]` requests in minute i, evenly spread. */
async function feed(detector: ReturnType<typeof createAnomalyDetector>, clock: TestClock, subject: string, perMinute: number[]) {
  for (const n of perMinute) {
    const start = Math.floor(clock.ms / MINUTE) * MINUTE;
    for (let i = 0; i < n; i++) {
      clock.ms = start + Math.floor((i * MINUTE) / Math.max(1, n));
      await detector.observe(subject, 1);
    }
    clock.ms = start + MINUTE;
  }
}

describe("anomaly detector", () => {
  it("learns a user's own baseline, then flags a burst far above it once per bucket", async () => {
    const clock = new TestClock(Date.UTC(2026, 10, 25, 9, 0, 0));
    const events: AnomalyEvent[] = [];
    const detector = createAnomalyDetector({ now: clock.now, onAnomaly: (e) => void events.push(e) });
    // A steady 10 ± 2 requests a minute for 30 minutes.
    await feed(detector, clock, "user:ann", Array.from({ length: 30 }, (_, i) => 10 + ((i % 5) - 2)));
    expect(events).toEqual([]);

    // 18 in a minute is within the user's normal spread.
    await feed(detector, clock, "user:ann", [18]);
    expect(events).toEqual([]);

    const verdicts = [];
    for (let i = 0; i < 60; i++) verdicts.push(await detector.observe("user:ann", 1));
    const first = verdicts.findIndex((v) => v.anomalous);
    expect(first).toBeGreaterThan(18);
    expect(first).toBeLessThan(30);
    expect(verdicts[first]!.threshold).toBeCloseTo(events[0]!.threshold);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ type: "usage.anomaly", subject: "user:ann", metric: "requests", observed: first + 1, blocked: false });
    expect(events[0]!.baseline.buckets).toBe(31);
    expect(events[0]!.baseline.mean).toBeGreaterThan(9);
    expect(events[0]!.baseline.mean).toBeLessThan(12);

    // Another user with a much higher normal rate is not flagged at the same level.
    await feed(detector, clock, "user:bot", Array(20).fill(100));
    await feed(detector, clock, "user:bot", [110]);
    expect(events).toHaveLength(1);
  });

  it("stays quiet while learning and ignores idle time in the baseline", async () => {
    const clock = new TestClock(Date.UTC(2026, 10, 25, 12, 0, 0));
    const events: AnomalyEvent[] = [];
    const detector = createAnomalyDetector({ now: clock.now, minBuckets: 5, onAnomaly: (e) => void events.push(e) });
    await feed(detector, clock, "user:new", [5, 500, 5]);
    expect(events).toEqual([]);
    const learning = await detector.check("user:new");
    expect(learning).toMatchObject({ learning: true, threshold: undefined, anomalous: false });
    await feed(detector, clock, "user:ann", [10, 10, 10, 10, 10]);
    clock.advance(12 * 3600_000); // a night away
    await feed(detector, clock, "user:ann", [12]);
    expect(events).toEqual([]);
  });

  it("blocks a flagged user through the middleware with 429 until the bucket ends", async () => {
    const clock = new TestClock(Date.UTC(2026, 10, 25, 9, 0, 0));
    const events: AnomalyEvent[] = [];
    const detector = createAnomalyDetector({ now: clock.now, block: true, minBuckets: 5, onAnomaly: (e) => void events.push(e) });
    await feed(detector, clock, "user:ann", [4, 4, 4, 4, 4]);
    const app = await serve((koa) => {
      koa.use(anomalyGuard({ detector, now: clock.now }));
      koa.use((ctx) => {
        ctx.body = { ok: true };
      });
    });
    try {
      const principal = { userId: "ann" };
      const statuses: number[] = [];
      for (let i = 0; i < 12; i++) statuses.push((await app.fetch("/", { principal })).status);
      // Threshold: 4 + 4·max(0, 0.25·4) = 8, so the 9th request in the minute is refused.
      expect(statuses).toEqual([...Array(8).fill(200), ...Array(4).fill(429)]);
      clock.advance(15_000);
      const refused = await app.fetch("/", { principal });
      expect(refused.body.error).toMatchObject({ code: "usage_anomaly", details: { metric: "requests", threshold: 8 } });
      expect(refused.headers.get("retry-after")).toBe("45");
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({ blocked: true, threshold: 8, observed: 9 });
      // Others are unaffected; the next minute starts afresh.
      expect((await app.fetch("/", { principal: { userId: "bob" } })).status).toBe(200);
      clock.advance(45_000);
      expect((await app.fetch("/", { principal })).status).toBe(200);
    } finally {
      await app.close();
    }
  });

  it("flags spend reported after runs and refuses the next request when blocking", async () => {
    const clock = new TestClock(Date.UTC(2026, 10, 25, 0, 0, 0));
    const HOUR = 3600_000;
    const events: AnomalyEvent[] = [];
    const spendAt = createAnomalyDetector({ metric: "spend", bucketMs: HOUR, minBuckets: 3, block: true, now: clock.now, onAnomaly: (e) => void events.push(e) });
    for (const micros of [200_000, 250_000, 180_000, 220_000]) {
      await spendAt.observe("user:ann", micros);
      clock.advance(HOUR);
    }
    expect((await spendAt.observe("user:ann", 300_000)).anomalous).toBe(false);
    expect((await spendAt.observe("user:ann", 5_000_000)).anomalous).toBe(true);
    expect(events[0]).toMatchObject({ metric: "spend", subject: "user:ann" });
    const app = await serve((koa) => {
      koa.use(anomalyGuard({ detector: spendAt, amount: () => 0, now: clock.now }));
      koa.use((ctx) => {
        ctx.body = { ok: true };
      });
    });
    try {
      expect((await app.fetch("/", { principal: { userId: "ann" } })).status).toBe(429);
      expect((await app.fetch("/")).status).toBe(200);
    } finally {
      await app.close();
    }
  });

  it("validates options and amounts", async () => {
    expect(() => createAnomalyDetector({ alpha: 1 })).toThrow(ConfigError);
    expect(() => createAnomalyDetector({ bucketMs: 10 })).toThrow(ConfigError);
    expect(() => anomalyGuard({ detector: {} as never })).toThrow(ConfigError);
    expect(atEdge(await (createAnomalyDetector().observe("u", -1)).catch((e: unknown) => e))).toMatchObject({ name: "AnomalyInputError", status: 400 });
    expect(atEdge(await (createAnomalyDetector().observe("u", Number.NaN)).catch((e: unknown) => e))).toMatchObject({ status: 400 });
    expect(atEdge(await (createAnomalyDetector().observe("u\u0000", 1)).catch((e: unknown) => e))).toMatchObject({ status: 400 });
  });
});

/** Learns `base` a minute for `learn` minutes, then ramps by `growth` a minute; returns the per-minute rate at the first flag. */
async function ramp(detector: ReturnType<typeof createAnomalyDetector>, clock: TestClock, subject: string, base: number, growth: number, minutes: number, learn = 15) {
  for (let i = 0; i < learn; i++) {
    await detector.observe(subject, base + (i % 3) - 1);
    clock.advance(MINUTE);
  }
  let rate = base;
  for (let i = 0; i < minutes; i++) {
    rate *= 1 + growth;
    const n = Math.round(rate);
    // The minute's usage arrives in ten parts, as requests would.
    for (let part = 0; part < 10; part++) {
      const verdict = await detector.observe(subject, n / 10);
      if (verdict.anomalous) return { flaggedAt: n, minute: i + 1 };
    }
    clock.advance(MINUTE);
  }
  return { flaggedAt: undefined, minute: undefined };
}

describe("anomaly detector against slow ramps", () => {
  it("flags +20% a minute from a learned 10/min long before it reaches 1,100/min", async () => {
    const clock = new TestClock(Date.UTC(2026, 10, 25, 9, 0, 0));
    const events: AnomalyEvent[] = [];
    const detector = createAnomalyDetector({ now: clock.now, onAnomaly: (e) => void events.push(e) });
    const { flaggedAt, minute } = await ramp(detector, clock, "user:ramp", 10, 0.2, 25);
    expect(minute).toBeDefined();
    expect(flaggedAt!).toBeLessThanOrEqual(60);
    expect(events[0]).toMatchObject({ subject: "user:ramp" });
  });

  it("flags a slower ramp (+5% a minute, +2% a minute) too, once it outgrows the growth the host allows", async () => {
    for (const growth of [0.05, 0.02]) {
      const clock = new TestClock(Date.UTC(2026, 10, 25, 9, 0, 0));
      const detector = createAnomalyDetector({ now: clock.now });
      const { flaggedAt } = await ramp(detector, clock, `user:slow-${growth}`, 10, growth, 300);
      expect(flaggedAt, `+${growth * 100}%/min`).toBeDefined();
      // Flagged once the ramp outgrows 4x a level allowed to double each hour.
      expect(flaggedAt!).toBeLessThan(300);
    }
  });

  it("lets growth within maxGrowthPerHour pass: 10/min growing 0.5% a minute for three hours is not flagged", async () => {
    const clock = new TestClock(Date.UTC(2026, 10, 25, 9, 0, 0));
    const events: AnomalyEvent[] = [];
    const detector = createAnomalyDetector({ now: clock.now, onAnomaly: (e) => void events.push(e) });
    const { flaggedAt } = await ramp(detector, clock, "user:growing", 10, 0.005, 180);
    expect(flaggedAt).toBeUndefined();
    expect(events).toEqual([]);
  });

  it("holds an absolute ceiling from the first request, even while learning", async () => {
    const clock = new TestClock(Date.UTC(2026, 10, 25, 9, 0, 0));
    const detector = createAnomalyDetector({ now: clock.now, maxAmount: 100, maxGrowthPerHour: Number.POSITIVE_INFINITY, block: true });
    const first = await detector.observe("user:new", 100);
    expect(first).toMatchObject({ learning: true, anomalous: false, threshold: 100 });
    expect(await detector.observe("user:new", 1)).toMatchObject({ learning: true, anomalous: true });
    // With the growth rule off, the ceiling alone still stops the ramp of a user with a baseline.
    const { flaggedAt } = await ramp(detector, clock, "user:ceiling", 10, 0.2, 40);
    expect(flaggedAt!).toBeLessThanOrEqual(110);
  });
});

describeEachDatabase("anomaly baselines in PostgreSQL", (fixture) => {
  beforeAll(() => migrateToLatest(fixture.database.db, [limitMigrations]));

  it("keeps request and spend baselines apart for the same user and survives a new detector", async () => {
    const clock = new TestClock(Date.UTC(2026, 10, 25, 9, 0, 0));
    const store = createKyselyAnomalyStateStore(fixture.database.db);
    const user = `user:${randomUUID()}`;
    const requests = createAnomalyDetector({ store, now: clock.now, minBuckets: 3 });
    const spend = createAnomalyDetector({ store, metric: "spend", now: clock.now, minBuckets: 3 });
    await feed(requests, clock, user, [5, 5, 5]);
    expect((await spend.check(user)).learning).toBe(true);
    // A detector created later (a restarted process) continues from the stored baseline.
    const restarted = createAnomalyDetector({ store, now: clock.now, minBuckets: 3 });
    const verdict = await restarted.check(user);
    expect(verdict).toMatchObject({ learning: false, threshold: 10 });
  });

  it("flags a +20%/min ramp with baselines kept in the database", async () => {
    const clock = new TestClock(Date.UTC(2026, 10, 25, 9, 0, 0));
    const detector = createAnomalyDetector({ store: createKyselyAnomalyStateStore(fixture.database.db), now: clock.now });
    const { flaggedAt } = await ramp(detector, clock, `user:${randomUUID()}`, 10, 0.2, 25);
    expect(flaggedAt!).toBeLessThanOrEqual(60);
  });

  if (fixture.kind === "postgres") {
    describe("across processes", () => {
      const pools = separatePools(fixture, 2, { maxConnections: 4 });

      it("sees a burst split over two processes whole, and reports it once", async () => {
        const clock = new TestClock(Date.UTC(2026, 10, 25, 9, 0, 0));
        const events: AnomalyEvent[] = [];
        const detectors = pools.map((p) =>
          createAnomalyDetector({ store: createKyselyAnomalyStateStore(p.db), now: clock.now, minBuckets: 5, onAnomaly: (e) => void events.push(e) }),
        );
        const user = `user:${randomUUID()}`;
        for (let minute = 0; minute < 5; minute++) {
          await Promise.all(Array.from({ length: 6 }, (_, i) => detectors[i % 2]!.observe(user, 1)));
          clock.advance(MINUTE);
        }
        // 6 a minute: threshold 6 + 4·1.5 = 12. Each process alone sees 10 of the 20 below it.
        const verdicts = await Promise.all(Array.from({ length: 20 }, (_, i) => detectors[i % 2]!.observe(user, 1)));
        expect(verdicts.filter((v) => v.anomalous).length).toBeGreaterThanOrEqual(8);
        expect(events).toHaveLength(1);
        expect(events[0]).toMatchObject({ observed: 13, threshold: 12 });
      });
    });
  }
});
