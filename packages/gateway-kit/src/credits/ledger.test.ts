import { randomUUID } from "node:crypto";
import { sql } from "kysely";
import { beforeAll, describe, expect, it } from "vitest";
import { migrateToLatest } from "../db/migrations.js";
import { describeEachDatabase } from "../testing/each-database.js";
import {
  AccountNotFoundError,
  IdempotencyConflictError,
  InsufficientCreditsError,
  LedgerInputError,
  ReservationClosedError,
  ReservationNotFoundError,
} from "./errors.js";
import { createKyselyLedger } from "./kysely-ledger.js";
import type { Ledger } from "./ledger.js";
import { creditMigrations, SYSTEM_ACCOUNTS } from "./migrations.js";
import { errorStatus } from "../http-error.js";

/** A domain error as the HTTP edge answers it: its fields plus the status from the code table. */
const atEdge = (error: unknown) => ({ ...(error as object), message: (error as Error).message, status: errorStatus(error) });

const key = (label: string) => `${label}:${randomUUID()}`;

describeEachDatabase("credits ledger", (fixture) => {
  let ledger: Ledger;
  const db = () => fixture.database.db;

  beforeAll(async () => {
    await migrateToLatest(db(), [creditMigrations]);
    ledger = createKyselyLedger(db());
  });

  async function funded(amount: number) {
    const wallet = await ledger.openWallet({ userId: `u_${randomUUID()}` });
    if (amount > 0) await ledger.grant({ account: wallet.id, amount, idempotencyKey: key("grant") });
    return wallet;
  }
  const balance = async (id: string) => (await ledger.getAccount(id)).balance;

  it("opens one wallet and one hold per owner, even when asked twice", async () => {
    const a = await ledger.openWallet({ userId: "u_same" });
    const b = await ledger.openWallet({ userId: "u_same" });
    expect(b.id).toBe(a.id);
    expect(a).toMatchObject({ kind: "user_wallet", ownerId: "u_same", balance: 0 });
    const team = await ledger.openWallet({ teamId: "u_same" });
    expect(team.id).not.toBe(a.id);
    expect(team.kind).toBe("team_wallet");
    expect((await ledger.getAccount(`hold:${a.id}`)).walletId).toBe(a.id);
    await expect(ledger.getAccount("nope")).rejects.toBeInstanceOf(AccountNotFoundError);
  });

  it("grants, purchases and transfers as two entries summing to zero", async () => {
    const user = await funded(0);
    const team = await ledger.openWallet({ teamId: `t_${randomUUID()}` });
    const granted = await ledger.grant({ account: user.id, amount: 3_000_000, idempotencyKey: key("g") });
    await ledger.purchase({ account: user.id, amount: 2_000_000, idempotencyKey: key("p") });
    await ledger.transfer({ from: user.id, to: team.id, amount: 1_500_000, idempotencyKey: key("t") });
    expect(await balance(user.id)).toBe(3_500_000);
    expect(await balance(team.id)).toBe(1_500_000);
    const entries = await db().selectFrom("ledger_entries").selectAll().where("transaction_id", "=", granted.transactionId).execute();
    expect(entries.map((e) => Number(e.amount)).sort((x, y) => x - y)).toEqual([-3_000_000, 3_000_000]);
    expect(entries.map((e) => e.account_id).sort()).toEqual([SYSTEM_ACCOUNTS.grants, user.id].sort());
    const statement = await ledger.listEntries(user.id);
    expect(statement.map((e) => [e.transactionKind, e.amount])).toEqual([
      ["transfer", -1_500_000],
      ["purchase", 2_000_000],
      ["grant", 3_000_000],
    ]);
    expect(await ledger.listEntries(user.id, { beforeId: statement[0]!.id, limit: 1 })).toEqual([statement[1]]);
    expect((await ledger.verify()).ok).toBe(true);
  });

  it("returns the first result for a repeated key and refuses the key with other parameters", async () => {
    const wallet = await funded(0);
    const k = key("grant");
    const first = await ledger.grant({ account: wallet.id, amount: 700, idempotencyKey: k });
    const again = await ledger.grant({ account: wallet.id, amount: 700, idempotencyKey: k });
    expect(again).toEqual(first);
    await expect(ledger.grant({ account: wallet.id, amount: 701, idempotencyKey: k })).rejects.toBeInstanceOf(IdempotencyConflictError);
    await expect(ledger.purchase({ account: wallet.id, amount: 700, idempotencyKey: k })).rejects.toBeInstanceOf(IdempotencyConflictError);
    expect(await balance(wallet.id)).toBe(700);

    const rk = key("reserve");
    const r1 = await ledger.reserve({ account: wallet.id, amount: 300, idempotencyKey: rk, ttlMs: 60_000 });
    const r2 = await ledger.reserve({ account: wallet.id, amount: 300, idempotencyKey: rk, ttlMs: 60_000 });
    // The replay says it did not create the hold (so it must not release it).
    expect(r2).toEqual({ ...r1, replayed: true });
    expect(r1.replayed).toBeUndefined();
    expect(r2.expiresAt).toBeInstanceOf(Date);
    expect(await balance(wallet.id)).toBe(400);
  });

  it("refuses an overdraft with the available amount and writes nothing", async () => {
    const wallet = await funded(1_000);
    const other = await funded(0);
    const before = await db().selectFrom("ledger_entries").select(sql<number>`count(*)::int`.as("n")).executeTakeFirstOrThrow();
    const k = key("t");
    const error = await ledger.transfer({ from: wallet.id, to: other.id, amount: 1_001, idempotencyKey: k }).catch((e) => e);
    expect(error).toBeInstanceOf(InsufficientCreditsError);
    expect(atEdge(error)).toMatchObject({ available: 1_000, requested: 1_001, status: 402 });
    await expect(ledger.reserve({ account: wallet.id, amount: 5_000, idempotencyKey: key("r"), ttlMs: 1000 })).rejects.toMatchObject({
      available: 1_000,
    });
    const after = await db().selectFrom("ledger_entries").select(sql<number>`count(*)::int`.as("n")).executeTakeFirstOrThrow();
    expect(after.n).toBe(before.n);
    // The refused key was not used up.
    await ledger.grant({ account: wallet.id, amount: 1, idempotencyKey: key("g") });
    await expect(ledger.transfer({ from: wallet.id, to: other.id, amount: 1_001, idempotencyKey: k })).resolves.toMatchObject({ amount: 1_001 });
  });

  it("rejects malformed input with a typed error", async () => {
    const wallet = await funded(10);
    for (const amount of [0, -5, 1.5, Number.NaN, 2 ** 53]) {
      await expect(ledger.grant({ account: wallet.id, amount, idempotencyKey: key("g") })).rejects.toBeInstanceOf(LedgerInputError);
    }
    await expect(ledger.grant({ account: wallet.id, amount: 1, idempotencyKey: "" })).rejects.toBeInstanceOf(LedgerInputError);
    await expect(ledger.reserve({ account: wallet.id, amount: 1, idempotencyKey: key("r"), ttlMs: 0 })).rejects.toBeInstanceOf(LedgerInputError);
    await expect(ledger.transfer({ from: wallet.id, to: wallet.id, amount: 1, idempotencyKey: key("t") })).rejects.toBeInstanceOf(LedgerInputError);
    await expect(ledger.grant({ account: "missing", amount: 1, idempotencyKey: key("g") })).rejects.toBeInstanceOf(AccountNotFoundError);
    await expect(ledger.grant({ account: `hold:${wallet.id}`, amount: 1, idempotencyKey: key("g") })).rejects.toBeInstanceOf(AccountNotFoundError);
    await expect(ledger.reserve({ account: SYSTEM_ACCOUNTS.revenue, amount: 1, idempotencyKey: key("r"), ttlMs: 10 })).rejects.toBeInstanceOf(AccountNotFoundError);
    expect(await balance(wallet.id)).toBe(10);
  });

  describe("reservations", () => {
    it("settles the actual amount to revenue and releases the rest", async () => {
      const wallet = await funded(10_000);
      const revenueBefore = await balance(SYSTEM_ACCOUNTS.revenue);
      const r = await ledger.reserve({ account: wallet.id, amount: 4_000, idempotencyKey: key("r"), ttlMs: 60_000, reference: "run_1" });
      expect(r).toMatchObject({ status: "open", amount: 4_000, reference: "run_1" });
      expect(await balance(wallet.id)).toBe(6_000);
      expect(await balance(r.holdAccountId)).toBe(4_000);
      const s = await ledger.settle(r.id, 1_234);
      expect(s).toMatchObject({ status: "settled", reserved: 4_000, charged: 1_234, released: 2_766, shortfall: 0 });
      expect(s.transactionIds).toHaveLength(2);
      expect(await balance(wallet.id)).toBe(8_766);
      expect(await balance(r.holdAccountId)).toBe(0);
      expect((await balance(SYSTEM_ACCOUNTS.revenue)) - revenueBefore).toBe(1_234);
      expect(await ledger.getReservation(r.id)).toMatchObject({ status: "settled", charged: 1_234, released: 2_766, transactionId: r.transactionId });
      // Same settle again: same answer, nothing new. A different amount or a release: refused.
      expect(await ledger.settle(r.id, 1_234)).toEqual(s);
      await expect(ledger.settle(r.id, 999)).rejects.toBeInstanceOf(IdempotencyConflictError);
      const closed = await ledger.release(r.id).catch((e) => e);
      expect(closed).toBeInstanceOf(ReservationClosedError);
      expect(closed.reservationStatus).toBe("settled");
      expect(await balance(wallet.id)).toBe(8_766);
    });

    it("draws usage above the reservation from the wallet as far as it goes and reports the shortfall", async () => {
      const wallet = await funded(1_000);
      const r = await ledger.reserve({ account: wallet.id, amount: 600, idempotencyKey: key("r"), ttlMs: 60_000 });
      const s = await ledger.settle(r.id, 800);
      expect(s).toMatchObject({ charged: 800, released: 0, shortfall: 0 });
      expect(await balance(wallet.id)).toBe(200);
      const r2 = await ledger.reserve({ account: wallet.id, amount: 100, idempotencyKey: key("r"), ttlMs: 60_000 });
      const s2 = await ledger.settle(r2.id, 1_000);
      expect(s2).toMatchObject({ charged: 200, released: 0, shortfall: 800 });
      expect(await balance(wallet.id)).toBe(0);
      expect((await ledger.verify()).ok).toBe(true);
    });

    it("settles zero as a full release and releases on cancel", async () => {
      const wallet = await funded(500);
      const r = await ledger.reserve({ account: wallet.id, amount: 500, idempotencyKey: key("r"), ttlMs: 60_000 });
      expect(await ledger.settle(r.id, 0)).toMatchObject({ charged: 0, released: 500 });
      const r2 = await ledger.reserve({ account: wallet.id, amount: 200, idempotencyKey: key("r"), ttlMs: 60_000 });
      const released = await ledger.release(r2.id);
      expect(released).toMatchObject({ status: "released", charged: 0, released: 200 });
      expect(await ledger.release(r2.id)).toEqual(released);
      await expect(ledger.settle(r2.id, 10)).rejects.toBeInstanceOf(ReservationClosedError);
      await expect(ledger.settle(randomUUID(), 10)).rejects.toBeInstanceOf(ReservationNotFoundError);
      expect(await balance(wallet.id)).toBe(500);
    });

    it("expires reservations past their time through the sweeper, once", async () => {
      const wallet = await funded(1_000);
      const short = await ledger.reserve({ account: wallet.id, amount: 300, idempotencyKey: key("r"), ttlMs: 1 });
      const long = await ledger.reserve({ account: wallet.id, amount: 200, idempotencyKey: key("r"), ttlMs: 3_600_000 });
      await new Promise((resolve) => setTimeout(resolve, 20));
      const swept = await ledger.sweepExpiredReservations();
      const mine = swept.filter((s) => s.accountId === wallet.id);
      expect(mine).toEqual([expect.objectContaining({ reservationId: short.id, status: "expired", released: 300, charged: 0 })]);
      expect((await ledger.sweepExpiredReservations()).some((s) => s.reservationId === short.id)).toBe(false);
      expect(await balance(wallet.id)).toBe(800);
      expect((await ledger.getReservation(long.id)).status).toBe("open");
      const late = await ledger.settle(short.id, 100).catch((e) => e);
      expect(late).toBeInstanceOf(ReservationClosedError);
      expect(late.reservationStatus).toBe("expired");
    });
  });

  describe("the database keeps the books", () => {
    it("refuses a negative wallet balance even through raw SQL", async () => {
      const wallet = await funded(100);
      await expect(sql`update ledger_accounts set balance = -1 where id = ${wallet.id}`.execute(db())).rejects.toThrow(/ledger_entries/);
      await expect(sql`update ledger_accounts set balance = 1000000 where id = ${wallet.id}`.execute(db())).rejects.toThrow();
      await expect(
        db()
          .transaction()
          .execute(async (trx) => {
            const op = key("raw");
            await sql`insert into ledger_operations (idempotency_key, kind, request_hash) values (${op}, 'transfer', 'x')`.execute(trx);
            await sql`insert into ledger_transactions (id, operation_key, kind) values (${op}, ${op}, 'transfer')`.execute(trx);
            await sql`insert into ledger_entries (transaction_id, account_id, amount) values
              (${op}, ${wallet.id}, -101), (${op}, ${SYSTEM_ACCOUNTS.revenue}, 101)`.execute(trx);
          }),
      ).rejects.toThrow(/ledger_accounts_non_negative/);
      expect(await balance(wallet.id)).toBe(100);
    });

    it("refuses an unbalanced transaction at commit", async () => {
      const wallet = await funded(100);
      await expect(
        db()
          .transaction()
          .execute(async (trx) => {
            const op = key("raw");
            await sql`insert into ledger_operations (idempotency_key, kind, request_hash) values (${op}, 'grant', 'x')`.execute(trx);
            await sql`insert into ledger_transactions (id, operation_key, kind) values (${op}, ${op}, 'grant')`.execute(trx);
            await sql`insert into ledger_entries (transaction_id, account_id, amount) values (${op}, ${wallet.id}, 50)`.execute(trx);
          }),
      ).rejects.toThrow(/unbalanced/);
      expect(await balance(wallet.id)).toBe(100);
    });

    it("refuses UPDATE, DELETE and TRUNCATE of entries and transactions", async () => {
      const wallet = await funded(100);
      await expect(sql`update ledger_entries set amount = 1 where account_id = ${wallet.id}`.execute(db())).rejects.toThrow(/append-only/);
      await expect(sql`delete from ledger_entries where account_id = ${wallet.id}`.execute(db())).rejects.toThrow(/append-only/);
      await expect(sql`truncate ledger_entries cascade`.execute(db())).rejects.toThrow(/append-only/);
      await expect(sql`delete from ledger_transactions`.execute(db())).rejects.toThrow(/append-only/);
      await expect(sql`delete from ledger_accounts where id = ${wallet.id}`.execute(db())).rejects.toThrow(/append-only/);
      expect(await balance(wallet.id)).toBe(100);
      const check = await ledger.verify();
      expect(check).toMatchObject({ ok: true, sumOfEntries: 0, unbalancedTransactions: [], accountsOutOfStep: [], negativeWallets: [] });
    });
  });
});

describeEachDatabase("credits data rights", (fixture) => {
  it("exports a user's wallets, balances, entries and reservations, and erasure keeps the ledger balanced", async () => {
    const { creditsDataRights } = await import("./data-rights.js");
    const db = fixture.database.db;
    await migrateToLatest(db, [creditMigrations]);
    const ledger = createKyselyLedger(db);
    const userId = `u_${randomUUID()}`;
    const wallet = await ledger.openWallet({ userId });
    const stranger = await ledger.openWallet({ userId: `u_${randomUUID()}` });
    await ledger.grant({ account: wallet.id, amount: 9_000, idempotencyKey: key("g") });
    await ledger.grant({ account: stranger.id, amount: 1, idempotencyKey: key("g") });
    const r = await ledger.reserve({ account: wallet.id, amount: 2_000, idempotencyKey: key("r"), ttlMs: 60_000, reference: "run_9" });
    await ledger.settle(r.id, 500);

    const archive = (await creditsDataRights.export(db, userId)) as any;
    expect(JSON.parse(JSON.stringify(archive))).toEqual(archive);
    expect(archive.accounts.map((a: any) => [a.kind, a.balance])).toEqual([
      ["user_wallet", "8500"],
      ["hold", "0"],
    ]);
    expect(archive.entries.map((e: any) => `${e.kind} ${e.amount}`).sort()).toEqual(
      ["grant 9000", "reserve -2000", "reserve 2000", "charge -500", "release -1500", "release 1500"].sort(),
    );
    expect(archive.reservations).toEqual([expect.objectContaining({ id: r.id, status: "settled", charged: "500", reference: "run_9" })]);
    expect(JSON.stringify(archive)).not.toContain(stranger.id);
    expect(await creditsDataRights.export(db, "nobody")).toEqual({ accounts: [], entries: [], reservations: [] });

    await db.transaction().execute((trx) => creditsDataRights.erase(trx, userId));
    expect((await ledger.getAccount(wallet.id)).balance).toBe(8_500);
    expect((await ledger.verify()).ok).toBe(true);
  });
});
