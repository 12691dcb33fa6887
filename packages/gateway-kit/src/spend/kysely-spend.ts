import { createHash, randomUUID } from "node:crypto";
import { sql, type Kysely, type Transaction } from "kysely";
import * as z from "zod";
import { budgetEngineOf, type BudgetEngine } from "../budgets/internal.js";
import { BudgetScope, type BudgetAlert, type Budgets, type BudgetStatus } from "../budgets/index.js";
import { IdempotencyConflictError } from "../credits/index.js";
import { createKyselyLedger } from "../credits/index.js";
import { ledgerDatabaseOf } from "../credits/internal.js";
import type { Ledger, WalletOwner } from "../credits/index.js";
import { retryTransaction } from "../db/index.js";
import { ConfigError } from "../errors.js";
import type { MicroCredits } from "../money.js";
import {
  SpendClosedError,
  SpendInputError,
  SpendNotFoundError,
  type Spend,
  type SpendHandle,
  type SpendHold,
  type SpendReserveInput,
  type SpendSettlement,
  type SpendStatus,
  type SpendSweepOptions,
} from "./types.js";

type Trx = Transaction<any>;

export interface SpendOptions {
  /** The database of the ledger, the budgets and `spendMigrations`. */
  db: Kysely<any>;
  /** The wallet side: a ledger made by `createKyselyLedger` on the same database. */
  ledger: Ledger;
  /** The budget side: made by `createKyselyBudgets` on the same database (its notifier delivers alerts). Optional. */
  budgets?: Budgets;
  /** How long a hold lasts when `reserve` names no `ttlMs`. Default one hour. */
  ttlMs?: number;
  /**
   * Usage above the estimate at `settle`: `"wallet"` (default) draws it from the wallet as far as
   * the balance goes; `"none"` charges at most the estimate. Either way the rest is `shortfall`.
   */
  overspend?: "wallet" | "none";
  /** Attempts for a transaction that hits a serialization failure or deadlock. Default 10. */
  maxAttempts?: number;
}

const Positive = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
const NonNegative = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const Text = z.string().min(1).max(200).regex(/^[^\u0000]*$/, "must not contain NUL");
const Ttl = z.number().int().positive().max(366 * 24 * 3600 * 1000);
const HANDLE = /^spend_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const ReserveSchema = z
  .object({
    wallet: z.union([Text, z.object({ userId: Text }).strict(), z.object({ teamId: Text }).strict()]),
    estimate: Positive,
    idempotencyKey: Text,
    scopes: z.array(BudgetScope).max(20).optional(),
    ttlMs: Ttl.optional(),
    reference: Text.optional(),
  })
  .strict();

function parse<T extends z.ZodType>(schema: T, value: unknown, what: string): z.output<T> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new SpendInputError(`Invalid ${what}: ${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

function handleOf(input: SpendHandle): string {
  const handle = typeof input === "string" ? input : input?.handle;
  if (typeof handle !== "string" || !HANDLE.test(handle)) throw new SpendInputError("Invalid spend handle: expected the `handle` reserve returned");
  return handle;
}

const num = (v: unknown): MicroCredits => Number(v);

/** Scopes without repeats, in one order, so a replayed key compares equal whatever order it came in. */
function canonical(scopes: BudgetScope[]): BudgetScope[] {
  const seen = new Map(scopes.map((s) => [`${s.kind}:${s.id}`, s]));
  return [...seen.keys()].sort().map((k) => ({ kind: seen.get(k)!.kind, id: seen.get(k)!.id }));
}

interface SpendRow {
  id: string;
  idempotency_key: string;
  request_hash: string;
  account_id: string;
  reservation_id: string;
  budget_key: string | null;
  scopes: string;
  estimate: unknown;
  status: SpendStatus;
  actual: unknown;
  charged: unknown;
  released: unknown;
  shortfall: unknown;
  reference: string | null;
  expires_at: Date | string;
  created_at: Date | string;
  closed_at: Date | string | null;
}

interface LedgerHoldRow {
  status: string;
  lapsed: boolean;
  charged: unknown;
  released: unknown;
  shortfall: unknown;
}

function settlementOf(row: SpendRow, replayed: boolean, budgets: BudgetStatus[] = [], alerts: BudgetAlert[] = []): SpendSettlement {
  return {
    handle: row.id,
    status: row.status as SpendSettlement["status"],
    estimate: num(row.estimate),
    actual: num(row.actual),
    charged: num(row.charged),
    released: num(row.released),
    shortfall: num(row.shortfall),
    closedAt: new Date(row.closed_at!),
    replayed,
    budgets,
    alerts,
  };
}

function holdOf(row: SpendRow, replayed: boolean, budgets: BudgetStatus[] = []): SpendHold {
  return {
    handle: row.id,
    status: row.status,
    accountId: row.account_id,
    reservationId: row.reservation_id,
    estimate: num(row.estimate),
    scopes: JSON.parse(row.scopes) as BudgetScope[],
    reference: row.reference,
    idempotencyKey: row.idempotency_key,
    expiresAt: new Date(row.expires_at),
    createdAt: new Date(row.created_at),
    budgets,
    remaining: budgets.length ? Math.min(...budgets.map((b) => b.remaining)) : undefined,
    replayed,
    settlement: row.status === "open" ? null : settlementOf(row, true),
  };
}

/** Thrown inside a reserve transaction whose key another caller committed first: undo, then replay. */
class KeyTaken extends Error {}

/**
 * The spend service over the kysely ledger and budgets (PostgreSQL or PGlite). Run
 * `creditMigrations`, `budgetMigrations` and `spendMigrations` first. Every call is one
 * transaction, retried on serialization failures and deadlocks; it needs no request, so a job
 * worker in another process settles with the stored handle alone.
 *
 * @example
 * const spend = createSpend({ db, ledger: createKyselyLedger(db), budgets: createKyselyBudgets(db, { notifier }) });
 * const hold = await spend.reserve({ wallet: { teamId }, estimate: 5_000_000, idempotencyKey: `run:${runId}`, scopes: budgetScopesOf(principal) });
 * await saveRun(runId, hold.handle);
 * // later, in the worker:
 * await spend.settle(handle, priceOfUsage);   // or spend.release(handle) if it never started
 */
export function createSpend(options: SpendOptions): Spend {
  const { db, ledger } = options ?? ({} as SpendOptions);
  if (!db || typeof db.transaction !== "function") throw new ConfigError("createSpend needs db: the Kysely instance of the ledger and budgets");
  const ledgerDb = ledger ? ledgerDatabaseOf(ledger) : undefined;
  if (!ledgerDb) throw new ConfigError("createSpend needs ledger: one made by createKyselyLedger, so wallet and budget holds share a transaction");
  if (ledgerDb !== db) throw new ConfigError("createSpend: the ledger must be made on the same db as the spend");
  let engine: BudgetEngine | undefined;
  if (options.budgets !== undefined) {
    engine = budgetEngineOf(options.budgets);
    if (!engine) throw new ConfigError("createSpend: budgets must be made by createKyselyBudgets, so wallet and budget holds share a transaction");
    if (engine.db !== db) throw new ConfigError("createSpend: the budgets must be made on the same db as the spend");
  }
  const ttlMs = options.ttlMs ?? 3_600_000;
  if (!Ttl.safeParse(ttlMs).success) throw new ConfigError("createSpend: ttlMs must be a positive whole number of milliseconds (at most a year)");
  const overspend = options.overspend ?? "wallet";
  if (overspend !== "wallet" && overspend !== "none") throw new ConfigError('createSpend: overspend must be "wallet" or "none"');
  const maxAttempts = options.maxAttempts ?? 10;
  if (!Number.isInteger(maxAttempts) || maxAttempts < 1) throw new ConfigError("createSpend: maxAttempts must be a positive integer");

  const transaction = <T>(work: (trx: Trx) => Promise<T>) => retryTransaction(db, work, maxAttempts);
  const deliver = async (alerts: BudgetAlert[]) => {
    // Delivery failures stay pending in the budgets' alert table for `deliverPendingAlerts`.
    if (engine && alerts.length > 0) await engine.deliver(alerts).catch(() => 0);
  };

  async function lockSpend(trx: Trx, handle: string): Promise<SpendRow> {
    const { rows } = await sql<SpendRow>`select * from spends where id = ${handle} for update`.execute(trx);
    if (!rows[0]) throw new SpendNotFoundError(handle);
    return rows[0];
  }

  async function lockLedgerHold(trx: Trx, reservationId: string): Promise<LedgerHoldRow> {
    const { rows } = await sql<LedgerHoldRow>`
      select status, charged, released, shortfall, expires_at <= now() as lapsed from ledger_reservations where id = ${reservationId} for update`.execute(trx);
    return rows[0]!;
  }

  /** Writes how the spend closed and returns the row. */
  async function close(trx: Trx, row: SpendRow, status: SpendSettlement["status"], n: { actual: number; charged: number; released: number; shortfall: number }): Promise<SpendRow> {
    const { rows } = await sql<SpendRow>`
      update spends set status = ${status}, actual = ${n.actual}, charged = ${n.charged}, released = ${n.released}, shortfall = ${n.shortfall}, closed_at = now()
      where id = ${row.id} returning *`.execute(trx);
    return rows[0]!;
  }

  /** Sets the budget holds to what was charged (0 releases them). */
  async function settleBudgets(trx: Trx, row: SpendRow, charged: number) {
    if (!row.budget_key) return { statuses: [] as BudgetStatus[], alerts: [] as BudgetAlert[] };
    if (!engine) throw new ConfigError(`Spend ${row.id} holds budgets but this spend service has no budgets`);
    // Released already by `budgets.releaseStaleReservations` (a sweep not meant for spends): the
    // budgets were given back then; this settle leaves them as they are rather than fail.
    const { rows } = await sql<{ settled_at: Date | null }>`select settled_at from budget_charges where idempotency_key = ${row.budget_key} for update`.execute(trx);
    if (!rows[0] || rows[0].settled_at !== null) return { statuses: [] as BudgetStatus[], alerts: [] as BudgetAlert[] };
    return engine.settleIn(trx, row.budget_key, charged);
  }

  /**
   * Closes a spend whose wallet hold is no longer open for settling (its time ran out, or it was
   * closed on the ledger directly): releases what is still held and mirrors the ledger's outcome.
   */
  async function closeFromLedger(trx: Trx, row: SpendRow, hold: LedgerHoldRow, txLedger: Ledger): Promise<{ row: SpendRow; budgets: BudgetStatus[]; alerts: BudgetAlert[] }> {
    if (hold.status === "settled") {
      const charged = num(hold.charged);
      const budgets = await settleBudgets(trx, row, charged);
      const closed = await close(trx, row, "settled", { actual: charged + num(hold.shortfall), charged, released: num(hold.released), shortfall: num(hold.shortfall) });
      return { row: closed, budgets: budgets.statuses, alerts: budgets.alerts };
    }
    let released = num(hold.released);
    if (hold.status === "open") released = (await txLedger.release(row.reservation_id, { idempotencyKey: `spend-expire:${row.id}` })).released;
    const budgets = await settleBudgets(trx, row, 0);
    const status = hold.status === "released" ? "released" : "expired";
    const closed = await close(trx, row, status, { actual: 0, charged: 0, released, shortfall: 0 });
    return { row: closed, budgets: budgets.statuses, alerts: budgets.alerts };
  }

  async function reserve(input: SpendReserveInput): Promise<SpendHold> {
    const parsed = parse(ReserveSchema, input, "spend reservation");
    const scopes = canonical(parsed.scopes ?? []);
    if (scopes.length > 0 && !engine) throw new ConfigError("This spend has budget scopes but createSpend was given no budgets");
    const ttl = parsed.ttlMs ?? ttlMs;
    const requestHash = createHash("sha256")
      .update(JSON.stringify([parsed.wallet, parsed.estimate, scopes, ttl, parsed.reference ?? null]))
      .digest("base64url");
    const replay = async (): Promise<SpendHold | undefined> => {
      const { rows } = await sql<SpendRow>`select * from spends where idempotency_key = ${parsed.idempotencyKey}`.execute(db);
      const row = rows[0];
      if (!row) return undefined;
      if (row.request_hash !== requestHash) throw new IdempotencyConflictError(parsed.idempotencyKey);
      return holdOf(row, true);
    };
    const first = await replay();
    if (first) return first;
    try {
      const { row, budgets, alerts } = await transaction(async (trx) => {
        const txLedger = createKyselyLedger(trx);
        const id = `spend_${randomUUID()}`;
        const account = typeof parsed.wallet === "string" ? parsed.wallet : (await txLedger.openWallet(parsed.wallet as WalletOwner)).id;
        // The wallet first, then the budgets: every spend locks in this order.
        const reservation = await txLedger.reserve({ account, amount: parsed.estimate, idempotencyKey: `spend:${id}`, ttlMs: ttl, ...(parsed.reference ? { reference: parsed.reference } : {}) });
        const budgetKey = scopes.length > 0 ? `spend:${id}` : null;
        const charge = budgetKey ? await engine!.chargeIn(trx, "reserve", scopes, parsed.estimate, budgetKey) : { statuses: [], alerts: [] };
        const { rows } = await sql<SpendRow>`
          insert into spends (id, idempotency_key, request_hash, account_id, reservation_id, budget_key, scopes, estimate, status, reference, expires_at)
          values (${id}, ${parsed.idempotencyKey}, ${requestHash}, ${account}, ${reservation.id}, ${budgetKey}, ${JSON.stringify(scopes)},
            ${parsed.estimate}, 'open', ${parsed.reference ?? null}, ${reservation.expiresAt})
          on conflict (idempotency_key) do nothing
          returning *`.execute(trx);
        // Another caller with the same key committed while this one worked: undo everything here.
        if (!rows[0]) throw new KeyTaken();
        return { row: rows[0], budgets: charge.statuses, alerts: charge.alerts };
      });
      await deliver(alerts);
      return holdOf(row, false, budgets);
    } catch (error) {
      if (!(error instanceof KeyTaken)) throw error;
      return (await replay())!;
    }
  }

  async function settle(input: SpendHandle, actualIn: MicroCredits): Promise<SpendSettlement> {
    const handle = handleOf(input);
    const actual = parse(NonNegative, actualIn, "actual amount (micro-credits)");
    const outcome = await transaction(async (trx) => {
      const row = await lockSpend(trx, handle);
      if (row.status === "settled") return { settlement: settlementOf(row, true) };
      if (row.status !== "open") throw new SpendClosedError(handle, row.status);
      const txLedger = createKyselyLedger(trx);
      const hold = await lockLedgerHold(trx, row.reservation_id);
      if (hold.status !== "open" || hold.lapsed) {
        const closed = await closeFromLedger(trx, row, hold, txLedger);
        return { settlement: settlementOf(closed.row, closed.row.status === "settled", closed.budgets, closed.alerts) };
      }
      const estimate = num(row.estimate);
      const billable = overspend === "none" ? Math.min(actual, estimate) : actual;
      const settled = await txLedger.settle(row.reservation_id, billable, { idempotencyKey: `spend-settle:${handle}` });
      const budgets = await settleBudgets(trx, row, settled.charged);
      const closed = await close(trx, row, "settled", { actual, charged: settled.charged, released: settled.released, shortfall: settled.shortfall + (actual - billable) });
      return { settlement: settlementOf(closed, false, budgets.statuses, budgets.alerts) };
    });
    await deliver(outcome.settlement.alerts);
    // Its time ran out (or it was released on the ledger) before this settle: nothing was charged.
    if (outcome.settlement.status !== "settled") throw new SpendClosedError(handle, outcome.settlement.status);
    return outcome.settlement;
  }

  async function release(input: SpendHandle): Promise<SpendSettlement> {
    const handle = handleOf(input);
    const outcome = await transaction(async (trx) => {
      const row = await lockSpend(trx, handle);
      if (row.status === "released" || row.status === "expired") return settlementOf(row, true);
      if (row.status === "settled") throw new SpendClosedError(handle, row.status);
      const txLedger = createKyselyLedger(trx);
      const hold = await lockLedgerHold(trx, row.reservation_id);
      if (hold.status !== "open") {
        const closed = await closeFromLedger(trx, row, hold, txLedger);
        return settlementOf(closed.row, closed.row.status === "settled", closed.budgets, closed.alerts);
      }
      const released = await txLedger.release(row.reservation_id, { idempotencyKey: `spend-release:${handle}` });
      const budgets = await settleBudgets(trx, row, 0);
      const closed = await close(trx, row, "released", { actual: 0, charged: 0, released: released.released, shortfall: 0 });
      return settlementOf(closed, false, budgets.statuses, budgets.alerts);
    });
    if (outcome.status === "settled") throw new SpendClosedError(handle, "settled");
    return outcome;
  }

  async function get(input: SpendHandle): Promise<SpendHold> {
    const handle = handleOf(input);
    const { rows } = await sql<SpendRow>`select * from spends where id = ${handle}`.execute(db);
    if (!rows[0]) throw new SpendNotFoundError(handle);
    return holdOf(rows[0], false);
  }

  async function sweepExpired(sweep: SpendSweepOptions = {}): Promise<SpendSettlement[]> {
    const limit = parse(z.number().int().positive().max(10_000), sweep.limit ?? 100, "sweep limit");
    const { rows: due } = await sql<{ id: string }>`
      select id from spends where status = 'open' and expires_at <= now() order by expires_at, id limit ${limit}`.execute(db);
    const out: SpendSettlement[] = [];
    for (const { id } of due) {
      const settlement = await transaction(async (trx) => {
        // Skip one a settle or release holds right now; whoever holds it closes it.
        const { rows } = await sql<SpendRow>`select * from spends where id = ${id} and status = 'open' for update skip locked`.execute(trx);
        const row = rows[0];
        if (!row) return undefined;
        const hold = await lockLedgerHold(trx, row.reservation_id);
        const closed = await closeFromLedger(trx, row, hold, createKyselyLedger(trx));
        return settlementOf(closed.row, false, closed.budgets, closed.alerts);
      });
      if (settlement) {
        await deliver(settlement.alerts);
        out.push(settlement);
      }
    }
    return out;
  }

  return { reserve, settle, release, get, sweepExpired };
}
