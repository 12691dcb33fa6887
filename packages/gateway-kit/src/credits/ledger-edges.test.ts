import { randomUUID } from "node:crypto";
import { beforeAll, expect, it } from "vitest";
import { migrateToLatest } from "../db/migrations.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { createKyselyLedger } from "./kysely-ledger.js";
import type { Ledger } from "./ledger.js";
import { creditMigrations, SYSTEM_ACCOUNTS } from "./migrations.js";
import { errorStatus } from "../http-error.js";

/** A domain error as the HTTP edge answers it: its fields plus the status from the code table. */
const atEdge = (error: unknown) => ({ ...(error as object), message: (error as Error).message, status: errorStatus(error) });

const MAX = Number.MAX_SAFE_INTEGER;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describeEachDatabase("ledger edges", (fixture) => {
  let ledger: Ledger;
  beforeAll(async () => {
    await migrateToLatest(fixture.database.db, [creditMigrations]);
    ledger = createKyselyLedger(fixture.database.db);
  });
  const wallet = async (amount = 0) => {
    const w = await ledger.openWallet({ userId: `u_${randomUUID()}` });
    if (amount > 0) await ledger.purchase({ account: w.id, amount, idempotencyKey: `buy:${w.id}` });
    return w.id;
  };
  const balance = async (id: string) => (await ledger.getAccount(id)).balance;

  it("refuses a transfer whose source or destination is a system account: a caller-chosen source cannot mint credits", async () => {
    const target = await wallet();
    const before = await ledger.getAccount(SYSTEM_ACCOUNTS.revenue);
    for (const from of [SYSTEM_ACCOUNTS.grants, SYSTEM_ACCOUNTS.purchases, SYSTEM_ACCOUNTS.revenue, "system:anything"]) {
      expect(atEdge(await (ledger.transfer({ from, to: target, amount: 1_000_000, idempotencyKey: randomUUID() })).catch((e: unknown) => e))).toMatchObject({ status: 404, code: "account_not_found" });
    }
    const source = await wallet(500);
    await expect(ledger.transfer({ from: source, to: SYSTEM_ACCOUNTS.revenue, amount: 100, idempotencyKey: randomUUID() })).rejects.toMatchObject({ code: "account_not_found" });
    await expect(ledger.transfer({ from: source, to: `hold:${source}`, amount: 100, idempotencyKey: randomUUID() })).rejects.toMatchObject({ code: "account_not_found" });
    expect(await balance(target)).toBe(0);
    expect(await balance(source)).toBe(500);
    expect((await ledger.getAccount(SYSTEM_ACCOUNTS.revenue)).balance).toBe(before.balance);
    expect((await ledger.verify()).ok).toBe(true);
  });

  it("answers a grant or purchase to a system account or a hold with a typed error, not an SQL error", async () => {
    const w = await wallet();
    for (const account of [SYSTEM_ACCOUNTS.revenue, SYSTEM_ACCOUNTS.grants, "system:x", `hold:${w}`]) {
      expect(atEdge(await (ledger.grant({ account, amount: 5, idempotencyKey: randomUUID() })).catch((e: unknown) => e))).toMatchObject({ name: "AccountNotFoundError", status: 404 });
      expect(atEdge(await (ledger.purchase({ account, amount: 5, idempotencyKey: randomUUID() })).catch((e: unknown) => e))).toMatchObject({ name: "AccountNotFoundError", status: 404 });
    }
    // NUL bytes never reach the driver.
    expect(atEdge(await (ledger.grant({ account: "a\u0000b", amount: 5, idempotencyKey: "k" })).catch((e: unknown) => e))).toMatchObject({ name: "LedgerInputError", status: 400 });
    await expect(ledger.getAccount("a\u0000b")).rejects.toMatchObject({ name: "LedgerInputError" });
  });

  it("cannot settle a reservation whose time ran out, even before the sweeper released it; the sweeper still can", async () => {
    const w = await wallet(1_000);
    const hold = await ledger.reserve({ account: w, amount: 600, idempotencyKey: randomUUID(), ttlMs: 1 });
    await sleep(20);
    const attempts = await Promise.allSettled(Array.from({ length: 10 }, () => ledger.settle(hold.id, 600)));
    for (const a of attempts) expect(a.status === "rejected" ? atEdge(a.reason) : a).toMatchObject({ name: "ReservationClosedError", status: 409 });
    expect((await ledger.getReservation(hold.id)).status).toBe("open");
    const swept = await ledger.sweepExpiredReservations();
    expect(swept.find((s) => s.reservationId === hold.id)).toMatchObject({ status: "expired", charged: 0, released: 600 });
    expect(await balance(w)).toBe(1_000);
    // A live reservation still settles.
    const live = await ledger.reserve({ account: w, amount: 100, idempotencyKey: randomUUID(), ttlMs: 60_000 });
    expect(await ledger.settle(live.id, 80)).toMatchObject({ status: "settled", charged: 80 });
  });

  it("reverses paid credits once under 50 concurrent replays; spent credits become a recorded debt that freezes the wallet until paid", async () => {
    const w = await wallet(10_000_000);
    const run = await ledger.reserve({ account: w, amount: 7_000_000, idempotencyKey: randomUUID(), ttlMs: 60_000 });
    await ledger.settle(run.id, 7_000_000);
    const input = { account: w, amount: 10_000_000, idempotencyKey: `refund:${w}`, reason: "refund" as const };
    const results = await Promise.all(Array.from({ length: 50 }, () => ledger.reverse(input)));
    for (const r of results) expect(r).toMatchObject({ recovered: 3_000_000, debt: 7_000_000, reason: "refund" });
    expect(new Set(results.map((r) => r.transactionId)).size).toBe(1);
    expect(await ledger.getAccount(w)).toMatchObject({ balance: 0, debt: 7_000_000 });
    await expect(ledger.reverse({ ...input, amount: 5 })).rejects.toMatchObject({ code: "idempotency_conflict" });

    // Frozen: no new holds, no transfers out.
    expect(atEdge(await (ledger.reserve({ account: w, amount: 1, idempotencyKey: randomUUID(), ttlMs: 1000 })).catch((e: unknown) => e))).toMatchObject({ name: "WalletInDebtError", status: 402, code: "wallet_in_debt" });
    const other = await wallet();
    await expect(ledger.transfer({ from: w, to: other, amount: 1, idempotencyKey: randomUUID() })).rejects.toMatchObject({ code: "wallet_in_debt" });

    // New credits pay the debt first.
    await ledger.purchase({ account: w, amount: 5_000_000, idempotencyKey: randomUUID() });
    expect(await ledger.getAccount(w)).toMatchObject({ balance: 0, debt: 2_000_000 });
    await ledger.grant({ account: w, amount: 5_000_000, idempotencyKey: randomUUID() });
    expect(await ledger.getAccount(w)).toMatchObject({ balance: 3_000_000, debt: 0 });
    expect((await ledger.reserve({ account: w, amount: 1_000, idempotencyKey: randomUUID(), ttlMs: 1000 })).status).toBe("open");
    const kinds = (await ledger.listEntries(w)).map((e) => e.transactionKind);
    expect(kinds.filter((k) => k === "reversal")).toHaveLength(1);
    expect(kinds.filter((k) => k === "repayment")).toHaveLength(2);
    expect((await ledger.verify()).ok).toBe(true);
  });

  it("a hold released while the wallet is in debt pays the debt; usage above the hold is not drawn from a frozen wallet", async () => {
    const w = await wallet(1_000);
    const run = await ledger.reserve({ account: w, amount: 800, idempotencyKey: randomUUID(), ttlMs: 60_000 });
    // The purchase is refunded while the run holds 800: 200 recovered, 800 owed.
    expect(await ledger.reverse({ account: w, amount: 1_000, idempotencyKey: randomUUID(), reason: "dispute" })).toMatchObject({ recovered: 200, debt: 800 });
    const settled = await ledger.settle(run.id, 300);
    expect(settled).toMatchObject({ charged: 300, released: 500 });
    expect(await ledger.getAccount(w)).toMatchObject({ balance: 0, debt: 300 });
    expect((await ledger.verify()).ok).toBe(true);
  });
});

// A suite of its own: it drives the system accounts to the edge of the range.
describeEachDatabase("ledger amounts near 2^53", (fixture) => {
  let ledger: Ledger;
  beforeAll(async () => {
    await migrateToLatest(fixture.database.db, [creditMigrations]);
    ledger = createKyselyLedger(fixture.database.db);
  });

  it("refuses, with a typed error, any write that would take a balance past 2^53 - 1, and every balance stays readable", async () => {
    const a = (await ledger.openWallet({ userId: "big-a" })).id;
    const b = (await ledger.openWallet({ userId: "big-b" })).id;
    await ledger.grant({ account: a, amount: MAX, idempotencyKey: "a1" });
    expect(atEdge(await (ledger.grant({ account: a, amount: 1, idempotencyKey: "a2" })).catch((e: unknown) => e))).toMatchObject({ name: "LedgerInputError", status: 400 });
    await expect(ledger.grant({ account: a, amount: MAX + 1, idempotencyKey: "a3" })).rejects.toMatchObject({ name: "LedgerInputError" });
    // The grants account is at -(2^53 - 1): one more grant anywhere would pass the bound.
    expect(atEdge(await (ledger.grant({ account: b, amount: 1, idempotencyKey: "b1" })).catch((e: unknown) => e))).toMatchObject({ name: "LedgerInputError", status: 400 });
    // A transfer that would overflow the receiving wallet is refused too.
    await ledger.purchase({ account: b, amount: 10, idempotencyKey: "b2" });
    await expect(ledger.transfer({ from: b, to: a, amount: 5, idempotencyKey: "t1" })).rejects.toMatchObject({ name: "LedgerInputError" });
    expect((await ledger.getAccount(a)).balance).toBe(MAX);
    expect((await ledger.getAccount(SYSTEM_ACCOUNTS.grants)).balance).toBe(-MAX);
    expect((await ledger.getAccount(b)).balance).toBe(10);
    // Spending works on a full wallet.
    const hold = await ledger.reserve({ account: a, amount: MAX, idempotencyKey: "r1", ttlMs: 60_000 });
    expect((await ledger.settle(hold.id, MAX)).charged).toBe(MAX);
    expect((await ledger.getAccount(SYSTEM_ACCOUNTS.revenue)).balance).toBe(MAX);
    const check = await ledger.verify();
    expect(check.ok).toBe(true);
  });
});
