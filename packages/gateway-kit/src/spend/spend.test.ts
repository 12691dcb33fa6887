import { randomUUID } from "node:crypto";
import { execFile } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { sql } from "kysely";
import { beforeAll, describe, expect, it } from "vitest";
import { createKyselyBudgets } from "../budgets/kysely-budgets.js";
import { budgetMigrations } from "../budgets/migrations.js";
import { BudgetExceededError, type BudgetAlert, type BudgetScope, type Budgets } from "../budgets/types.js";
import { IdempotencyConflictError, InsufficientCreditsError } from "../credits/errors.js";
import { createKyselyLedger } from "../credits/kysely-ledger.js";
import type { Ledger } from "../credits/ledger.js";
import { creditMigrations } from "../credits/migrations.js";
import { migrateToLatest } from "../db/migrations.js";
import { ConfigError, GatewayError } from "../errors.js";
import { errorStatus } from "../http-error.js";
import { describeEachDatabase, separatePools } from "../testing/each-database.js";
import { createSpend } from "./kysely-spend.js";
import { spendDataRights } from "./data-rights.js";
import { spendMigrations } from "./migrations.js";
import { SpendClosedError, SpendInputError, SpendNotFoundError, type Spend, type SpendSettlement } from "./types.js";

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, "../../../..");
const run = promisify(execFile);

const team = (): BudgetScope => ({ kind: "team", id: `team-${randomUUID()}` });
const user = (): BudgetScope => ({ kind: "user", id: `user-${randomUUID()}` });
const codeOf = (error: unknown) => (error instanceof GatewayError ? error.code : String(error));

describeEachDatabase("spend", (fixture) => {
  let ledger: Ledger;
  let budgets: Budgets;
  let spend: Spend;
  const alerts: BudgetAlert[] = [];

  beforeAll(async () => {
    const db = fixture.database.db;
    await migrateToLatest(db, [creditMigrations, budgetMigrations, spendMigrations]);
    ledger = createKyselyLedger(db);
    budgets = createKyselyBudgets(db, { notifier: { notify: async (a) => void alerts.push(a) } });
    spend = createSpend({ db, ledger, budgets });
  });

  /** A funded team wallet with a monthly team budget and a daily user budget. */
  async function setup(balance: number, limits: { team?: number; user?: number } = {}) {
    const t = team();
    const u = user();
    const wallet = await ledger.openWallet({ teamId: t.id });
    if (balance > 0) await ledger.grant({ account: wallet.id, amount: balance, idempotencyKey: `g:${wallet.id}` });
    if (limits.team !== undefined) await budgets.setBudget({ scope: t, period: "monthly", limit: limits.team });
    if (limits.user !== undefined) await budgets.setBudget({ scope: u, period: "daily", limit: limits.user });
    const state = async () => ({
      wallet: (await ledger.getAccount(wallet.id)).balance,
      hold: (await ledger.getAccount(`hold:${wallet.id}`)).balance,
      spent: Object.fromEntries((await budgets.status([t, u])).map((s) => [s.budget.scope.kind, s.spent])),
    });
    return { t, u, wallet, scopes: [t, u], state };
  }

  const spendCount = async (key: string) =>
    Number((await sql<{ n: string | number }>`select count(*) as n from spends where idempotency_key = ${key}`.execute(fixture.database.db)).rows[0]!.n);

  it("holds the estimate in the wallet and in every budget at once, and settles all of them to the actual cost once", async () => {
    const { wallet, scopes, state } = await setup(10_000, { team: 50_000, user: 8_000 });
    const hold = await spend.reserve({ wallet: wallet.id, estimate: 3_000, idempotencyKey: randomUUID(), scopes, reference: "run_1" });
    expect(hold).toMatchObject({ status: "open", accountId: wallet.id, estimate: 3_000, remaining: 5_000, replayed: false, settlement: null });
    expect(hold.handle).toMatch(/^spend_/);
    expect(await state()).toEqual({ wallet: 7_000, hold: 3_000, spent: { team: 3_000, user: 3_000 } });

    const settled = await spend.settle(hold.handle, 1_200);
    expect(settled).toMatchObject({ status: "settled", estimate: 3_000, actual: 1_200, charged: 1_200, released: 1_800, shortfall: 0, replayed: false });
    expect(await state()).toEqual({ wallet: 8_800, hold: 0, spent: { team: 1_200, user: 1_200 } });
    expect(await spend.get(hold.handle)).toMatchObject({ status: "settled", settlement: { charged: 1_200 } });
    expect(await ledger.verify()).toMatchObject({ ok: true });
  });

  it("is all or nothing: when one budget cannot take the estimate, neither the wallet nor the other budget holds anything", async () => {
    const { wallet, t, u, scopes, state } = await setup(10_000, { team: 50_000, user: 2_000 });
    const key = randomUUID();
    const error = await spend.reserve({ wallet: wallet.id, estimate: 2_500, idempotencyKey: key, scopes }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BudgetExceededError);
    // It names the budget that refused.
    expect((error as BudgetExceededError).details).toMatchObject({ scope: u, period: "daily", limit: 2_000, remaining: 2_000, requested: 2_500 });
    expect(errorStatus(error)).toBe(402);
    expect(await state()).toEqual({ wallet: 10_000, hold: 0, spent: { team: 0, user: 0 } });
    expect(await spendCount(key)).toBe(0);
    expect((await ledger.listEntries(wallet.id)).map((e) => e.transactionKind)).toEqual(["grant"]);
    // The refused key is not used up: the same key fits once the budget allows it.
    await budgets.setBudget({ scope: u, period: "daily", limit: 3_000 });
    await spend.reserve({ wallet: wallet.id, estimate: 2_500, idempotencyKey: key, scopes: [t, u] });
    expect(await state()).toEqual({ wallet: 7_500, hold: 2_500, spent: { team: 2_500, user: 2_500 } });
  });

  it("is all or nothing the other way: a wallet that cannot cover the estimate leaves both budgets untouched", async () => {
    const { wallet, scopes, state } = await setup(1_000, { team: 50_000, user: 50_000 });
    const error = await spend.reserve({ wallet: wallet.id, estimate: 1_001, idempotencyKey: randomUUID(), scopes }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InsufficientCreditsError);
    expect((error as InsufficientCreditsError).details).toMatchObject({ available: 1_000, requested: 1_001 });
    expect(await state()).toEqual({ wallet: 1_000, hold: 0, spent: { team: 0, user: 0 } });
  });

  it("rolls everything back when the database fails mid-transaction, on reserve and on settle", async () => {
    const db = fixture.database.db;
    const { wallet, scopes, state } = await setup(10_000, { team: 50_000, user: 50_000 });
    // A real failure after the wallet and budget writes: the spend row itself is refused.
    await sql`create function spend_test_fail() returns trigger language plpgsql as $$
      begin
        if (tg_op = 'INSERT' and new.reference = 'boom') or (tg_op = 'UPDATE' and new.reference = 'boom-on-close' and new.status <> 'open') then raise exception 'disk on fire'; end if;
        return new;
      end $$`.execute(db);
    await sql`create trigger spend_test_fail before insert or update on spends for each row execute function spend_test_fail()`.execute(db);
    try {
      await expect(spend.reserve({ wallet: wallet.id, estimate: 4_000, idempotencyKey: randomUUID(), scopes, reference: "boom" })).rejects.toThrow(/disk on fire/);
      expect(await state()).toEqual({ wallet: 10_000, hold: 0, spent: { team: 0, user: 0 } });

      // Settle fails on its last write: the ledger charge and the budget correction go with it.
      const hold = await spend.reserve({ wallet: wallet.id, estimate: 4_000, idempotencyKey: randomUUID(), scopes, reference: "boom-on-close" });
      await expect(spend.settle(hold.handle, 1_000)).rejects.toThrow(/disk on fire/);
      await expect(spend.release(hold.handle)).rejects.toThrow(/disk on fire/);
      expect(await state()).toEqual({ wallet: 6_000, hold: 4_000, spent: { team: 4_000, user: 4_000 } });
      expect((await ledger.getReservation(hold.reservationId)).status).toBe("open");
      await sql`drop trigger spend_test_fail on spends`.execute(db);
      // Once the fault is gone, the same handle settles, once.
      expect(await spend.settle(hold.handle, 1_000)).toMatchObject({ status: "settled", charged: 1_000, released: 3_000 });
      expect(await state()).toEqual({ wallet: 9_000, hold: 0, spent: { team: 1_000, user: 1_000 } });
    } finally {
      await sql`drop trigger if exists spend_test_fail on spends`.execute(db);
      await sql`drop function if exists spend_test_fail()`.execute(db);
    }
    expect(await ledger.verify()).toMatchObject({ ok: true });
  });

  it("settles exactly once: a second settle (any amount) returns the first result and charges nothing more", async () => {
    const { wallet, scopes, state } = await setup(10_000, { team: 50_000 });
    const hold = await spend.reserve({ wallet: wallet.id, estimate: 2_000, idempotencyKey: randomUUID(), scopes });
    const first = await spend.settle(hold.handle, 1_500);
    const again = await spend.settle(hold.handle, 1_500);
    const other = await spend.settle({ handle: hold.handle }, 9_999);
    for (const repeat of [again, other]) {
      expect(repeat).toMatchObject({ status: "settled", actual: 1_500, charged: 1_500, released: 500, replayed: true });
      expect(repeat.closedAt).toEqual(first.closedAt);
    }
    expect(await state()).toEqual({ wallet: 8_500, hold: 0, spent: { team: 1_500 } });
    // Release after settle is refused, and changes nothing.
    const late = await spend.release(hold.handle).catch((e: unknown) => e);
    expect(late).toBeInstanceOf(SpendClosedError);
    expect(errorStatus(late)).toBe(409);
    expect(await state()).toEqual({ wallet: 8_500, hold: 0, spent: { team: 1_500 } });
  });

  it("refuses settle after release (spend_closed) and answers a second release with the first", async () => {
    const { wallet, scopes, state } = await setup(10_000, { team: 50_000, user: 50_000 });
    const hold = await spend.reserve({ wallet: wallet.id, estimate: 2_000, idempotencyKey: randomUUID(), scopes });
    const released = await spend.release(hold.handle);
    expect(released).toMatchObject({ status: "released", charged: 0, released: 2_000, replayed: false });
    expect(await spend.release(hold.handle)).toMatchObject({ status: "released", released: 2_000, replayed: true });
    const error = await spend.settle(hold.handle, 100).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SpendClosedError);
    expect((error as SpendClosedError).details).toMatchObject({ status: "released" });
    expect(await state()).toEqual({ wallet: 10_000, hold: 0, spent: { team: 0, user: 0 } });
  });

  it("charges usage above the estimate from the wallet as far as it goes, and reports the rest as shortfall", async () => {
    const { wallet, scopes, state } = await setup(3_000, { team: 2_000 });
    const hold = await spend.reserve({ wallet: wallet.id, estimate: 1_000, idempotencyKey: randomUUID(), scopes });
    // 1,000 from the hold, 1,500 of the 2,000 in the wallet: all 2,500 charged.
    expect(await spend.settle(hold.handle, 2_500)).toMatchObject({ charged: 2_500, released: 0, shortfall: 0 });
    // Budgets follow what was charged, past their limit: the work is done.
    expect(await state()).toEqual({ wallet: 500, hold: 0, spent: { team: 2_500 } });
    expect(alerts.some((a) => a.budget.scope.id === scopes[0]!.id && a.threshold === 100)).toBe(true);

    const next = await spend.reserve({ wallet: wallet.id, estimate: 400, idempotencyKey: randomUUID() });
    expect(await spend.settle(next.handle, 5_000)).toMatchObject({ charged: 500, shortfall: 4_500 });
    expect(await state()).toMatchObject({ wallet: 0, hold: 0 });
    expect(await ledger.verify()).toMatchObject({ ok: true, negativeWallets: [] });
  });

  it('with overspend "none" charges at most the estimate', async () => {
    const capped = createSpend({ db: fixture.database.db, ledger, budgets, overspend: "none" });
    const { wallet, scopes, state } = await setup(10_000, { team: 50_000 });
    const hold = await capped.reserve({ wallet: wallet.id, estimate: 1_000, idempotencyKey: randomUUID(), scopes });
    expect(await capped.settle(hold.handle, 1_700)).toMatchObject({ actual: 1_700, charged: 1_000, released: 0, shortfall: 700 });
    expect(await state()).toEqual({ wallet: 9_000, hold: 0, spent: { team: 1_000 } });
  });

  it("replays a reserve with the same key and input, and refuses one with other input", async () => {
    const { wallet, scopes, state } = await setup(10_000, { team: 50_000, user: 50_000 });
    const key = randomUUID();
    const first = await spend.reserve({ wallet: wallet.id, estimate: 1_000, idempotencyKey: key, scopes });
    // The same scopes in another order are the same request.
    const again = await spend.reserve({ wallet: wallet.id, estimate: 1_000, idempotencyKey: key, scopes: [...scopes].reverse() });
    expect(again).toMatchObject({ handle: first.handle, replayed: true, status: "open" });
    await expect(spend.reserve({ wallet: wallet.id, estimate: 1_001, idempotencyKey: key, scopes })).rejects.toBeInstanceOf(IdempotencyConflictError);
    await expect(spend.reserve({ wallet: wallet.id, estimate: 1_000, idempotencyKey: key, scopes: scopes.slice(1) })).rejects.toBeInstanceOf(IdempotencyConflictError);
    expect(await state()).toEqual({ wallet: 9_000, hold: 1_000, spent: { team: 1_000, user: 1_000 } });
    // Many at once with one key: one hold.
    const key2 = randomUUID();
    const all = await Promise.all(Array.from({ length: 8 }, () => spend.reserve({ wallet: wallet.id, estimate: 500, idempotencyKey: key2, scopes })));
    expect(new Set(all.map((h) => h.handle)).size).toBe(1);
    expect(all.filter((h) => !h.replayed).length).toBeLessThanOrEqual(1);
    expect(await state()).toEqual({ wallet: 8_500, hold: 1_500, spent: { team: 1_500, user: 1_500 } });
    expect(await ledger.verify()).toMatchObject({ ok: true });
  });

  it("never overdraws a wallet or a budget: 50 concurrent reserves that together exceed them", async () => {
    // The wallet binds.
    const a = await setup(20_000, { team: 1_000_000 });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) => spend.reserve({ wallet: a.wallet.id, estimate: 1_000, idempotencyKey: `${a.wallet.id}:${i}`, scopes: a.scopes })),
    );
    const admitted = outcomes.filter((o) => o.status === "fulfilled");
    expect(admitted).toHaveLength(20);
    for (const o of outcomes) if (o.status === "rejected") expect(o.reason).toBeInstanceOf(InsufficientCreditsError);
    expect(await a.state()).toEqual({ wallet: 0, hold: 20_000, spent: { team: 20_000 } });

    // A budget binds: the refused ones leave no wallet hold behind.
    const b = await setup(100_000, { team: 1_000_000, user: 15_000 });
    const outcomesB = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) => spend.reserve({ wallet: b.wallet.id, estimate: 1_000, idempotencyKey: `${b.wallet.id}:${i}`, scopes: b.scopes })),
    );
    expect(outcomesB.filter((o) => o.status === "fulfilled")).toHaveLength(15);
    for (const o of outcomesB) if (o.status === "rejected") expect(o.reason).toBeInstanceOf(BudgetExceededError);
    expect(await b.state()).toEqual({ wallet: 85_000, hold: 15_000, spent: { team: 15_000, user: 15_000 } });

    // Close them all at once, half settled and half released, with a sweep alongside.
    const holds = admitted.map((o) => (o as PromiseFulfilledResult<Awaited<ReturnType<Spend["reserve"]>>>).value);
    await Promise.all([...holds.map((h, i) => (i % 2 === 0 ? spend.settle(h.handle, 600) : spend.release(h.handle))), spend.sweepExpired()]);
    expect(await a.state()).toEqual({ wallet: 20_000 - 10 * 600, hold: 0, spent: { team: 10 * 600 } });
    expect(await ledger.verify()).toMatchObject({ ok: true, negativeWallets: [] });
  });

  it("gives concurrent settles and releases of one spend exactly one outcome", async () => {
    for (let round = 0; round < 3; round++) {
      const { wallet, scopes, state } = await setup(10_000, { team: 50_000, user: 50_000 });
      const hold = await spend.reserve({ wallet: wallet.id, estimate: 2_000, idempotencyKey: randomUUID(), scopes });
      const results = await Promise.allSettled(
        Array.from({ length: 10 }, (_, i) => (i % 2 === round % 2 ? spend.settle(hold.handle, 700 + i) : spend.release(hold.handle))),
      );
      const fresh = results.filter((r): r is PromiseFulfilledResult<SpendSettlement> => r.status === "fulfilled" && !r.value.replayed);
      expect(fresh).toHaveLength(1);
      const winner = fresh[0]!.value;
      for (const r of results) {
        if (r.status === "fulfilled") expect(r.value).toMatchObject({ status: winner.status, charged: winner.charged });
        else expect(r.reason).toBeInstanceOf(SpendClosedError);
      }
      const charged = winner.charged;
      expect(await state()).toEqual({ wallet: 10_000 - charged, hold: 0, spent: { team: charged, user: charged } });
    }
    expect(await ledger.verify()).toMatchObject({ ok: true });
  });

  it("settles with nothing but the handle, from another service instance", async () => {
    const { wallet, scopes, state } = await setup(10_000, { team: 50_000 });
    const hold = await spend.reserve({ wallet: { teamId: scopes[0]!.id }, estimate: 2_000, idempotencyKey: randomUUID(), scopes });
    expect(hold.accountId).toBe(wallet.id);
    const stored = JSON.parse(JSON.stringify({ spend: hold.handle })) as { spend: string };
    const elsewhere = createSpend({ db: fixture.database.db, ledger: createKyselyLedger(fixture.database.db), budgets: createKyselyBudgets(fixture.database.db) });
    expect(await elsewhere.settle(stored.spend, 900)).toMatchObject({ status: "settled", charged: 900 });
    expect(await spend.settle(hold.handle, 900)).toMatchObject({ replayed: true, charged: 900 });
    expect(await state()).toEqual({ wallet: 9_100, hold: 0, spent: { team: 900 } });
  });

  it("expires a spend whose time ran out: settle refuses it, and wallet and budgets get the hold back together", async () => {
    const { wallet, scopes, state } = await setup(10_000, { team: 50_000, user: 50_000 });
    const late = await spend.reserve({ wallet: wallet.id, estimate: 1_000, idempotencyKey: randomUUID(), scopes, ttlMs: 1 });
    const swept = await spend.reserve({ wallet: wallet.id, estimate: 2_000, idempotencyKey: randomUUID(), scopes, ttlMs: 1 });
    const byLedger = await spend.reserve({ wallet: wallet.id, estimate: 3_000, idempotencyKey: randomUUID(), scopes, ttlMs: 1 });
    await new Promise((r) => setTimeout(r, 20));
    const error = await spend.settle(late.handle, 500).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SpendClosedError);
    expect((error as SpendClosedError).details).toMatchObject({ status: "expired" });
    expect(await spend.get(late.handle)).toMatchObject({ status: "expired", settlement: { charged: 0, released: 1_000 } });
    // The ledger's own sweeper got to one wallet hold first; the spend sweep still frees its budgets.
    await ledger.sweepExpiredReservations();
    const result = await spend.sweepExpired();
    expect(result.map((s) => s.handle).sort()).toEqual([swept.handle, byLedger.handle].sort());
    expect(result.every((s) => s.status === "expired" && s.charged === 0)).toBe(true);
    expect(await state()).toEqual({ wallet: 10_000, hold: 0, spent: { team: 0, user: 0 } });
    expect(await spend.sweepExpired()).toEqual([]);
    expect(await ledger.verify()).toMatchObject({ ok: true });
  });

  it("exports a user's spends, by their wallet or their budget scope, for data rights", async () => {
    const u = user();
    const own = await ledger.openWallet({ userId: u.id });
    await ledger.grant({ account: own.id, amount: 5_000, idempotencyKey: `g:${own.id}` });
    const { wallet, t } = await setup(5_000);
    const mine = await spend.reserve({ wallet: own.id, estimate: 100, idempotencyKey: randomUUID() });
    const counted = await spend.reserve({ wallet: wallet.id, estimate: 200, idempotencyKey: randomUUID(), scopes: [t, u], reference: "run_x" });
    await spend.reserve({ wallet: wallet.id, estimate: 300, idempotencyKey: randomUUID(), scopes: [t] });
    await spend.settle(counted.handle, 150);
    const exported = (await spendDataRights.export(fixture.database.db, u.id)) as { spends: Array<Record<string, unknown>> };
    expect(exported.spends.map((s) => s.handle)).toEqual([mine.handle, counted.handle]);
    expect(exported.spends[1]).toMatchObject({ status: "settled", estimate: "200", charged: "150", reference: "run_x" });
    // A user id with LIKE wildcards matches only itself.
    expect(((await spendDataRights.export(fixture.database.db, "%")) as { spends: unknown[] }).spends).toEqual([]);
  });

  it("answers bad input and unknown handles with coded errors, and bad options with a config error", async () => {
    const { wallet } = await setup(10_000);
    for (const estimate of [0, -1, 1.5, Number.NaN, 2 ** 60]) {
      const error = await spend.reserve({ wallet: wallet.id, estimate, idempotencyKey: randomUUID() }).catch((e: unknown) => e);
      expect(error, String(estimate)).toBeInstanceOf(SpendInputError);
      expect(errorStatus(error)).toBe(400);
    }
    await expect(spend.reserve({ wallet: wallet.id, estimate: 1, idempotencyKey: "" })).rejects.toBeInstanceOf(SpendInputError);
    await expect(spend.reserve({ wallet: wallet.id, estimate: 1, idempotencyKey: "a\u0000b" })).rejects.toBeInstanceOf(SpendInputError);
    await expect(spend.reserve({ wallet: "system:revenue", estimate: 1, idempotencyKey: randomUUID() })).rejects.toMatchObject({ code: "account_not_found" });
    await expect(spend.settle("run_123", 1)).rejects.toBeInstanceOf(SpendInputError);
    await expect(spend.settle(`spend_${randomUUID()}`, 1)).rejects.toBeInstanceOf(SpendNotFoundError);
    await expect(spend.release(`spend_${randomUUID()}`)).rejects.toBeInstanceOf(SpendNotFoundError);
    const hold = await spend.reserve({ wallet: wallet.id, estimate: 10, idempotencyKey: randomUUID() });
    for (const actual of [-1, 0.5, Number.POSITIVE_INFINITY]) await expect(spend.settle(hold.handle, actual)).rejects.toBeInstanceOf(SpendInputError);
    expect(codeOf(new SpendNotFoundError("x"))).toBe("spend_not_found");
    expect(errorStatus(new SpendNotFoundError("x"))).toBe(404);

    const db = fixture.database.db;
    expect(() => createSpend({ db, ledger: {} as never })).toThrow(ConfigError);
    expect(() => createSpend({ db, ledger, budgets: {} as never })).toThrow(ConfigError);
    expect(() => createSpend({ db, ledger, ttlMs: 0 })).toThrow(ConfigError);
    expect(() => createSpend({ db, ledger, overspend: "maybe" as never })).toThrow(ConfigError);
    const walletOnly = createSpend({ db, ledger });
    await expect(walletOnly.reserve({ wallet: wallet.id, estimate: 1, idempotencyKey: randomUUID(), scopes: [team()] })).rejects.toBeInstanceOf(ConfigError);
  });

  if (fixture.kind === "postgres") {
    describe("across connections and processes", () => {
      const pools = separatePools(fixture, 2, { maxConnections: 10 });

      it("settles from a job worker in another process that has only the handle", async () => {
        const { wallet, scopes, state } = await setup(10_000, { team: 50_000, user: 50_000 });
        const hold = await spend.reserve({ wallet: wallet.id, estimate: 3_000, idempotencyKey: randomUUID(), scopes });
        const child = (what: string) =>
          run(process.execPath, ["--import", "tsx", join(here, "fixtures/settle-in-child.ts"), fixture.url!, fixture.schema!, hold.handle, what], { cwd: repoRoot });
        const [first, second] = await Promise.all([child("2500"), child("release")]);
        const outcomes = [JSON.parse(first.stdout), JSON.parse(second.stdout)];
        // One of them closed it; the other got spend_closed.
        const winner = outcomes.find((o) => !o.error)!;
        expect(winner).toBeDefined();
        expect(outcomes.filter((o) => o.error === "spend_closed")).toHaveLength(1);
        const charged = winner.status === "settled" ? 2_500 : 0;
        expect(await state()).toEqual({ wallet: 10_000 - charged, hold: 0, spent: { team: charged, user: charged } });
      });

      it("admits no more than the wallet holds when reserves arrive over separate pools", async () => {
        const services = pools.map((p) => createSpend({ db: p.db, ledger: createKyselyLedger(p.db), budgets: createKyselyBudgets(p.db) }));
        const { wallet, scopes, state } = await setup(25_000, { team: 30_000, user: 1_000_000 });
        const outcomes = await Promise.allSettled(
          Array.from({ length: 50 }, (_, i) => services[i % 2]!.reserve({ wallet: wallet.id, estimate: 1_000, idempotencyKey: randomUUID(), scopes })),
        );
        const holds = outcomes.flatMap((o) => (o.status === "fulfilled" ? [o.value] : []));
        expect(holds).toHaveLength(25);
        expect(await state()).toEqual({ wallet: 0, hold: 25_000, spent: { team: 25_000, user: 25_000 } });
        // Settle every one from both pools at once: each is charged once.
        await Promise.all(holds.flatMap((h) => services.map((s) => s.settle(h.handle, 400))));
        expect(await state()).toEqual({ wallet: 25_000 - 25 * 400, hold: 0, spent: { team: 25 * 400, user: 25 * 400 } });
        expect(await ledger.verify()).toMatchObject({ ok: true });
      });
    });
  }
});
