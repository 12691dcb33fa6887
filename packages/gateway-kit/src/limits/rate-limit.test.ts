import { randomUUID } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import { migrateToLatest } from "../db/migrations.js";
import { describeEachDatabase, rateLimitStoreContract, separatePools, TestClock } from "../testing/index.js";
import { limitMigrations } from "./migrations.js";
import { rateLimit } from "./rate-limit.js";
import { createKyselyRateLimitStore, createMemoryRateLimitStore, type RateLimitStore } from "./rate-limit-store.js";
import { serve } from "./test-server.js";
import { errorStatus } from "../http-error.js";

/** A domain error as the HTTP edge answers it: its fields plus the status from the code table. */
const atEdge = (error: unknown) => ({ ...(error as object), message: (error as Error).message, status: errorStatus(error) });

rateLimitStoreContract("memory", createMemoryRateLimitStore);

describe("memory rate-limit store", () => {

  it("forgets refilled buckets as it goes, which behave like fresh ones", async () => {
    const store = createMemoryRateLimitStore();
    const rule = { limit: 2, windowMs: 1000 };
    for (let i = 0; i < 999; i++) await store.consume(`idle-${i}`, rule, 1, 0);
    // The 1000th consume sweeps; every idle bucket is full again by t = 500 ms.
    await store.consume("busy", rule, 2, 10_000);
    expect(await store.prune(Number.MAX_SAFE_INTEGER)).toBe(1);
    expect(await store.consume("idle-1", rule, 1, 10_000)).toMatchObject({ allowed: true, remaining: 1 });
  });
});

describeEachDatabase("PostgreSQL rate-limit store", (fixture) => {
  beforeAll(() => migrateToLatest(fixture.database.db, [limitMigrations]));
  rateLimitStoreContract("kysely", () => createKyselyRateLimitStore(fixture.database.db));

  if (fixture.kind === "postgres") {
    describe("across processes", () => {
      const pools = separatePools(fixture, 2, { maxConnections: 8 });

      it("admits exactly `limit` of 200 concurrent requests spread over two connection pools", async () => {
        const stores = pools.map((p) => createKyselyRateLimitStore(p.db));
        const key = randomUUID();
        const rule = { limit: 50, windowMs: 3_600_000 };
        const at = 10_000_000;
        const results = await Promise.all(Array.from({ length: 200 }, (_, i) => stores[i % 2]!.consume(key, rule, 1, at)));
        expect(results.filter((r) => r.allowed)).toHaveLength(50);
        expect(Math.min(...results.map((r) => r.remaining))).toBe(0);
      });
    });
  }

  it("limits per user and per API key through the middleware, with RateLimit headers and 429 + Retry-After", async () => {
    const clock = new TestClock(Date.UTC(2026, 10, 25, 12, 0, 0));
    const store = createKyselyRateLimitStore(fixture.database.db);
    const app = await serve((koa) => {
      koa.use(rateLimit({ store, limit: 5, windowMs: 60_000, by: "user", now: clock.now, name: `u${fixture.kind}` }));
      koa.use(rateLimit({ store, limit: 2, windowMs: 60_000, by: "api_key", now: clock.now, name: `k${fixture.kind}` }));
      koa.use((ctx) => {
        ctx.body = { ok: true, rateLimit: ctx.state.rateLimit?.name };
      });
    });
    try {
      const alice = { userId: `alice-${randomUUID()}` };
      const viaKey = { ...alice, via: "api_key" as const, apiKeyId: randomUUID() };
      const first = await app.fetch("/", { principal: alice });
      expect(first.status).toBe(200);
      expect(Object.fromEntries(["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy"].map((h) => [h, first.headers.get(h)]))).toEqual({
        "ratelimit-limit": "5",
        "ratelimit-remaining": "4",
        "ratelimit-reset": "12",
        "ratelimit-policy": "5;w=60",
      });
      // The key's own bucket (2) is tighter than the user's, so its headers win.
      const k1 = await app.fetch("/", { principal: viaKey });
      expect([k1.status, k1.headers.get("ratelimit-limit"), k1.headers.get("ratelimit-remaining")]).toEqual([200, "2", "1"]);
      await app.fetch("/", { principal: viaKey });
      const k3 = await app.fetch("/", { principal: viaKey });
      expect(k3.status).toBe(429);
      expect(k3.headers.get("retry-after")).toBe("30");
      expect(k3.headers.get("ratelimit-remaining")).toBe("0");
      expect(k3.body.error).toMatchObject({ code: "rate_limited", details: { limit: 2, windowSeconds: 60, retryAfterSeconds: 30 } });
      // The same user without the key still has budget in the user bucket: 5 - 4 taken so far.
      const u = await app.fetch("/", { principal: alice });
      expect([u.status, u.headers.get("ratelimit-remaining")]).toEqual([200, "0"]);
      const refused = await app.fetch("/", { principal: alice });
      expect([refused.status, refused.headers.get("retry-after")]).toEqual([429, "12"]);
      clock.advance(12_000);
      expect((await app.fetch("/", { principal: alice })).status).toBe(200);
      // Another user is untouched; anonymous callers are limited by IP.
      expect((await app.fetch("/", { principal: { userId: randomUUID() } })).headers.get("ratelimit-remaining")).toBe("4");
      expect((await app.fetch("/")).headers.get("ratelimit-remaining")).toBe("4");
    } finally {
      await app.close();
    }
  });
});

describe("rateLimit options", () => {
  it("throws a ConfigError for bad options at creation", () => {
    const store = createMemoryRateLimitStore();
    expect(() => rateLimit({ store, limit: 0, windowMs: 60_000 })).toThrow(ConfigError);
    expect(() => rateLimit({ store, limit: 10, windowMs: 10 })).toThrow(ConfigError);
    expect(() => rateLimit({ store: {} as never, limit: 10, windowMs: 60_000 })).toThrow(ConfigError);
    expect(() => rateLimit({ store, limit: 10, windowMs: 60_000, by: "team" as never })).toThrow(ConfigError);
    expect(() => rateLimit({ store, limit: 10, windowMs: 60_000, extra: 1 } as never)).toThrow(ConfigError);
  });
});
