import { randomBytes, randomUUID } from "node:crypto";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDatabase, type Database } from "../db/database.js";
import { migrateToLatest } from "../db/migrations.js";
import { TEST_DATABASE_URL } from "../testing/each-database.js";
import { InsufficientCreditsError, ReservationClosedError } from "./errors.js";
import { createKyselyLedger } from "./kysely-ledger.js";
import type { Ledger } from "./ledger.js";
import { creditMigrations } from "./migrations.js";

// Real concurrency needs real connections: PostgreSQL only, with a pool wide enough to contend.
describe("credits ledger under concurrency [postgres]", () => {
  const schema = `t_${randomBytes(6).toString("hex")}`;
  let database: Database;
  let ledger: Ledger;

  beforeAll(async () => {
    database = await openDatabase({ url: TEST_DATABASE_URL, schema, maxConnections: 24 });
    await migrateToLatest(database.db, [creditMigrations]);
    ledger = createKyselyLedger(database.db);
  });
  afterAll(async () => {
    await database?.close();
    const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await client.connect();
    await client.query(`drop schema if exists "${schema}" cascade`);
    await client.end();
  });

  const balance = async (id: string) => (await ledger.getAccount(id)).balance;

  it("admits exactly 50 of 200 concurrent reservations against a balance that covers 50", async () => {
    const wallet = await ledger.openWallet({ userId: `u_${randomUUID()}` });
    await ledger.grant({ account: wallet.id, amount: 50 * 1_000, idempotencyKey: `g:${wallet.id}` });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 200 }, (_, i) => ledger.reserve({ account: wallet.id, amount: 1_000, idempotencyKey: `r:${wallet.id}:${i}`, ttlMs: 60_000 })),
    );
    const admitted = outcomes.filter((o) => o.status === "fulfilled");
    const refused = outcomes.filter((o): o is PromiseRejectedResult => o.status === "rejected");
    expect(admitted).toHaveLength(50);
    expect(refused).toHaveLength(150);
    for (const r of refused) expect(r.reason).toBeInstanceOf(InsufficientCreditsError);
    expect(await balance(wallet.id)).toBe(0);
    expect(await balance(`hold:${wallet.id}`)).toBe(50_000);
    expect(await ledger.verify()).toMatchObject({ ok: true, sumOfEntries: 0 });

    // Close them all at once, half settled and half released, with a sweeper running alongside.
    const reservations = admitted.map((o) => (o as PromiseFulfilledResult<Awaited<ReturnType<Ledger["reserve"]>>>).value);
    await Promise.all([
      ...reservations.map((r, i) => (i % 2 === 0 ? ledger.settle(r.id, 400) : ledger.release(r.id))),
      ledger.sweepExpiredReservations(),
    ]);
    expect(await balance(wallet.id)).toBe(50_000 - 25 * 400);
    expect(await balance(`hold:${wallet.id}`)).toBe(0);
    expect(await ledger.verify()).toMatchObject({ ok: true, sumOfEntries: 0, negativeWallets: [] });
  });

  it("writes once when the same key arrives many times at once", async () => {
    const wallet = await ledger.openWallet({ userId: `u_${randomUUID()}` });
    await ledger.grant({ account: wallet.id, amount: 10_000, idempotencyKey: `g:${wallet.id}` });
    const key = `same:${wallet.id}`;
    const results = await Promise.all(Array.from({ length: 30 }, () => ledger.reserve({ account: wallet.id, amount: 3_000, idempotencyKey: key, ttlMs: 60_000 })));
    expect(new Set(results.map((r) => r.id)).size).toBe(1);
    expect(await balance(wallet.id)).toBe(7_000);
    const grants = await Promise.all(Array.from({ length: 30 }, () => ledger.grant({ account: wallet.id, amount: 5, idempotencyKey: `g2:${wallet.id}` })));
    expect(new Set(grants.map((g) => g.transactionId)).size).toBe(1);
    expect(await balance(wallet.id)).toBe(7_005);
  });

  it("lets exactly one of a concurrent settle and release close a reservation", async () => {
    const wallet = await ledger.openWallet({ userId: `u_${randomUUID()}` });
    await ledger.grant({ account: wallet.id, amount: 20 * 100, idempotencyKey: `g:${wallet.id}` });
    const reservations = await Promise.all(
      Array.from({ length: 20 }, (_, i) => ledger.reserve({ account: wallet.id, amount: 100, idempotencyKey: `r:${wallet.id}:${i}`, ttlMs: 60_000 })),
    );
    let charged = 0;
    for (const r of reservations) {
      const [settled, released] = await Promise.allSettled([ledger.settle(r.id, 60), ledger.release(r.id)]);
      const wins = [settled, released].filter((o) => o.status === "fulfilled");
      expect(wins).toHaveLength(1);
      const loser = [settled, released].find((o) => o.status === "rejected") as PromiseRejectedResult;
      expect(loser.reason).toBeInstanceOf(ReservationClosedError);
      if (settled.status === "fulfilled") charged += settled.value.charged;
    }
    expect(await balance(wallet.id)).toBe(2_000 - charged);
    expect((await ledger.verify()).ok).toBe(true);
  });

  it("expires each reservation once when several sweepers run at the same time as settlements", async () => {
    const wallet = await ledger.openWallet({ userId: `u_${randomUUID()}` });
    await ledger.grant({ account: wallet.id, amount: 100 * 100, idempotencyKey: `g:${wallet.id}` });
    const reservations = await Promise.all(
      Array.from({ length: 100 }, (_, i) => ledger.reserve({ account: wallet.id, amount: 100, idempotencyKey: `r:${wallet.id}:${i}`, ttlMs: 1 })),
    );
    await new Promise((resolve) => setTimeout(resolve, 20));
    const [late, ...sweeps] = await Promise.all([
      Promise.allSettled(reservations.slice(0, 20).map((r) => ledger.settle(r.id, 30))),
      ...Array.from({ length: 4 }, () => ledger.sweepExpiredReservations({ limit: 40 })),
    ]);
    let remaining = await ledger.sweepExpiredReservations();
    while (remaining.some((s) => s.accountId === wallet.id)) remaining = await ledger.sweepExpiredReservations();
    const expired = (sweeps as Awaited<ReturnType<Ledger["sweepExpiredReservations"]>>[]).flat().filter((s) => s.accountId === wallet.id);
    const settled = (late as PromiseSettledResult<unknown>[]).filter((o) => o.status === "fulfilled").length;
    const ids = new Set(expired.map((s) => s.reservationId));
    expect(ids.size).toBe(expired.length);
    const statuses = await Promise.all(reservations.map((r) => ledger.getReservation(r.id)));
    expect(statuses.filter((r) => r.status === "settled")).toHaveLength(settled);
    expect(statuses.filter((r) => r.status === "expired")).toHaveLength(100 - settled);
    expect(await balance(wallet.id)).toBe(10_000 - settled * 30);
    expect((await ledger.verify()).ok).toBe(true);
  });

  it("moves credits both ways between wallets at once without losing any", async () => {
    const a = await ledger.openWallet({ userId: `u_${randomUUID()}` });
    const b = await ledger.openWallet({ teamId: `t_${randomUUID()}` });
    await ledger.grant({ account: a.id, amount: 1_000, idempotencyKey: `g:${a.id}` });
    await ledger.grant({ account: b.id, amount: 1_000, idempotencyKey: `g:${b.id}` });
    await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        i % 2 === 0
          ? ledger.transfer({ from: a.id, to: b.id, amount: 7, idempotencyKey: `ab:${a.id}:${i}` })
          : ledger.transfer({ from: b.id, to: a.id, amount: 5, idempotencyKey: `ba:${a.id}:${i}` }),
      ),
    );
    expect(await balance(a.id)).toBe(1_000 - 50 * 7 + 50 * 5);
    expect(await balance(b.id)).toBe(1_000 + 50 * 7 - 50 * 5);
    expect((await ledger.verify()).ok).toBe(true);
  });
});
