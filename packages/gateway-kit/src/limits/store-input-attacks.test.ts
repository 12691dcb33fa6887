// Keys and inputs a client can steer into the limit stores: each is refused with a coded error or
// stored safely, never a database error.
import { randomBytes } from "node:crypto";
import { beforeAll, expect, it } from "vitest";
import { migrateToLatest } from "../db/migrations.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { limitMigrations } from "./migrations.js";
import { createKyselyRateLimitStore, createMemoryRateLimitStore } from "./rate-limit-store.js";

describeEachDatabase("rate-limit store keys from client input", (fixture) => {
  beforeAll(async () => {
    await migrateToLatest(fixture.database.db, [limitMigrations]);
  });
  const rule = { limit: 2, windowMs: 60_000 };

  it("takes keys of any length (an e-mail address or header a client chose) without a database error", async () => {
    const store = createKyselyRateLimitStore(fixture.database.db);
    const long = `login:${randomBytes(50_000).toString("hex")}@example.com`;
    expect((await store.consume(long, rule, 1, 1_000)).allowed).toBe(true);
    expect((await store.consume(long, rule, 1, 1_000)).allowed).toBe(true);
    expect((await store.consume(long, rule, 1, 1_000)).allowed).toBe(false);
    // Long keys that differ only at their end are different buckets.
    expect((await store.consume(`${long}.`, rule, 1, 1_000)).allowed).toBe(true);
  });

  it("keeps keys that differ only in unpaired surrogates apart, as the memory store does", async () => {
    for (const store of [createKyselyRateLimitStore(fixture.database.db), createMemoryRateLimitStore()]) {
      expect((await store.consume("ip:\ud800", { limit: 1, windowMs: 60_000 }, 1, 1_000)).allowed).toBe(true);
      expect((await store.consume("ip:\udc00", { limit: 1, windowMs: 60_000 }, 1, 1_000)).allowed).toBe(true);
    }
  });
});
