import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { RateLimitStore } from "../limits/index.js";

/**
 * The behaviour every `RateLimitStore` must have (a token bucket per key, refilled continuously).
 * `newStore` is called once per test; keys are random, so one shared database is fine.
 *
 * @example
 * rateLimitStoreContract("redis", () => createRedisRateLimitStore(redis));
 */
export function rateLimitStoreContract(name: string, newStore: () => RateLimitStore | Promise<RateLimitStore>): void {
  describe(`RateLimitStore contract: ${name}`, () => {
    const rule = { limit: 10, windowMs: 10_000 }; // one token per second

    it("lets a burst of `limit` through, then refuses until tokens come back", async () => {
      const store = await newStore();
      const key = randomUUID();
      const t0 = 1_000_000;
      const results = [];
      for (let i = 0; i < 11; i++) results.push(await store.consume(key, rule, 1, t0));
      expect(results.map((r) => r.allowed)).toEqual([...Array(10).fill(true), false]);
      expect(results.map((r) => r.remaining)).toEqual([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0]);
      expect(results[10]).toMatchObject({ limit: 10, retryAfterMs: 1000, resetMs: 10_000 });

      expect((await store.consume(key, rule, 1, t0 + 999)).allowed).toBe(false);
      const back = await store.consume(key, rule, 1, t0 + 2_500); // 2.5 tokens back, one taken
      expect(back).toMatchObject({ allowed: true, remaining: 1 });
      // Refill stops at the limit, however long the bucket sits.
      expect(await store.consume(key, rule, 1, t0 + 3_600_000)).toMatchObject({ allowed: true, remaining: 9 });
    });

    it("keeps buckets apart, charges costs, never refills on a clock that goes backwards, and prunes idle buckets", async () => {
      const store = await newStore();
      const a = randomUUID();
      const b = randomUUID();
      expect(await store.consume(a, rule, 6, 5_000)).toMatchObject({ allowed: true, remaining: 4 });
      expect(await store.consume(a, rule, 6, 5_000)).toMatchObject({ allowed: false, remaining: 4, retryAfterMs: 2000 });
      expect(await store.consume(b, rule, 1, 5_000)).toMatchObject({ allowed: true, remaining: 9 });
      expect(await store.consume(a, rule, 1, 1_000)).toMatchObject({ allowed: true, remaining: 3 });
      // A cost above the limit can never pass.
      expect((await store.consume(randomUUID(), rule, 11, 5_000)).allowed).toBe(false);
      expect(await store.prune(4_000)).toBe(0);
      expect(await store.prune(6_000)).toBeGreaterThanOrEqual(2);
      expect(await store.consume(a, rule, 1, 5_000)).toMatchObject({ remaining: 9 });
    });

    it("refuses a cost or rule that would refill the bucket with the coded invalid_request error, and the bucket stays drained", async () => {
      const store = await newStore();
      const key = randomUUID();
      for (let i = 0; i < 10; i++) await store.consume(key, rule, 1, 7_000);
      expect((await store.consume(key, rule, 1, 7_000)).allowed).toBe(false);
      for (const cost of [-1_000, -1, 0, 0.5, Number.NaN, Number.POSITIVE_INFINITY, "1" as never]) {
        await expect(store.consume(key, rule, cost, 7_000), String(cost)).rejects.toMatchObject({ code: "invalid_request" });
      }
      for (const bad of [{ limit: -10, windowMs: 10_000 }, { limit: 10, windowMs: 0 }, { limit: Number.NaN, windowMs: 10_000 }]) {
        await expect(store.consume(key, bad, 1, 7_000)).rejects.toMatchObject({ code: "invalid_request" });
      }
      await expect(store.consume(key, rule, 1, Number.NaN)).rejects.toMatchObject({ code: "invalid_request" });
      await expect(store.consume("", rule, 1, 7_000)).rejects.toMatchObject({ code: "invalid_request" });
      // Nothing was given back.
      expect((await store.consume(key, rule, 1, 7_000)).allowed).toBe(false);
    });

    it("admits exactly `limit` of many concurrent consumes", async () => {
      const store = await newStore();
      const key = randomUUID();
      const results = await Promise.all(Array.from({ length: 40 }, () => store.consume(key, { limit: 15, windowMs: 3_600_000 }, 1, 9_000_000)));
      expect(results.filter((r) => r.allowed)).toHaveLength(15);
    });
  });
}
