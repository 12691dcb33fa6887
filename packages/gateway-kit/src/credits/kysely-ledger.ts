import { createHash, randomUUID } from "node:crypto";
import { sql, type Kysely, type RawBuilder, type Selectable, type Transaction } from "kysely";
import * as z from "zod";
import {
  AccountNotFoundError,
  IdempotencyConflictError,
  InsufficientCreditsError,
  LedgerInputError,
  ReservationClosedError,
  ReservationNotFoundError,
  WalletInDebtError,
} from "./errors.js";
import type {
  AccountKind,
  CloseOptions,
  Ledger,
  LedgerAccount,
  LedgerCheck,
  LedgerEntry,
  ReserveInput,
  Reservation,
  ReversalInput,
  ReversalResult,
  ReservationStatus,
  Settlement,
  SweepOptions,
  TransferInput,
  TransferKind,
  TransferResult,
  WalletOwner,
  WalletTransferInput,
} from "./ledger.js";
import type { MicroCredits } from "../money.js";
import { SYSTEM_ACCOUNTS } from "./migrations.js";
import { retryTransaction } from "../db/index.js";
import type { CreditTables } from "./tables.js";

type Db = Kysely<CreditTables>;
type ReservationRow = Selectable<CreditTables["ledger_reservations"]>;

const Amount = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
// PostgreSQL text cannot hold NUL: refuse it here rather than fail in the driver.
const Key = z.string().min(1).max(255).regex(/^[^\u0000]*$/, "must not contain NUL");
const Id = z.string().min(1).max(255).regex(/^[^\u0000]*$/, "must not contain NUL");

const TransferInputSchema = z.object({ account: Id, amount: Amount, idempotencyKey: Key });
const WalletTransferSchema = z.object({ from: Id, to: Id, amount: Amount, idempotencyKey: Key });
const ReserveSchema = z.object({
  account: Id,
  amount: Amount,
  idempotencyKey: Key,
  ttlMs: z.number().int().positive().max(366 * 24 * 3600 * 1000),
  reference: z.string().max(255).optional(),
});
const ReversalSchema = z.object({ account: Id, amount: Amount, idempotencyKey: Key, reason: z.enum(["refund", "dispute"]) });
const ActualSchema = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const CloseSchema = z.object({ idempotencyKey: Key.optional() }).optional();
const WalletOwnerSchema = z.union([z.object({ userId: Id }), z.object({ teamId: Id })]);
const SweepLimit = z.number().int().positive().max(10_000);
const EntriesLimit = z.number().int().positive().max(1000);
const EntryCursor = z.string().regex(/^\d+$/);

function parse<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const result = schema.safeParse(value);
  if (!result.success) {
    throw new LedgerInputError(`Invalid ${what}: ${result.error.issues.map((i) => `${i.path.join(".") || "value"} ${i.message}`).join("; ")}`, result.error.issues);
  }
  return result.data;
}

/** Reads a bigint column (string from pg, number or bigint from PGlite) as a safe integer. */
function micro(value: unknown): MicroCredits {
  const n = typeof value === "number" ? value : Number(value);
  if (!Number.isSafeInteger(n)) throw new RangeError(`Ledger amount ${String(value)} is outside the safe integer range`);
  return n;
}

function hashRequest(kind: string, params: readonly unknown[]): string {
  return createHash("sha256").update(JSON.stringify([kind, ...params])).digest("base64url");
}

/** A locked account row that must be a user or team wallet, with its balance and debt read as numbers. */
function lockedWallet<R extends { kind: string; balance: string | number; debt: string | number }>(
  id: string,
  row: R | undefined,
): R & { balance: MicroCredits; debt: MicroCredits } {
  if (!row || (row.kind !== "user_wallet" && row.kind !== "team_wallet")) throw new AccountNotFoundError(id, row ? `is a ${row.kind} account, not a wallet` : undefined);
  return { ...row, balance: micro(row.balance), debt: micro(row.debt) };
}

/** Refuses a credit that would take a wallet's balance past the largest safe integer. */
function checkHeadroom(id: string, balance: MicroCredits, amount: MicroCredits): void {
  if (balance + amount > Number.MAX_SAFE_INTEGER) {
    throw new LedgerInputError(`Account ${id} would hold more than ${Number.MAX_SAFE_INTEGER} micro-credits`);
  }
}

/** The database's bound on balances (migration 0200) surfaced as a typed error, e.g. for system accounts. */
function boundError(error: unknown): unknown {
  const e = error as { code?: unknown; constraint?: unknown; message?: unknown };
  if (e?.code === "23514" && (e.constraint === "ledger_accounts_safe_balance" || String(e.message).includes("ledger_accounts_safe_balance"))) {
    return new LedgerInputError(`The amount would take an account past ${Number.MAX_SAFE_INTEGER} micro-credits`);
  }
  return error;
}

const isSystemId = (id: string) => id.startsWith("system:");
const holdIdOf = (walletId: string) => `hold:${walletId}`;
/** The order legs are written in, and replayed transaction ids are listed in. */
const LEG_ORDER = ["grant", "purchase", "transfer", "reserve", "charge", "release", "expire", "overage", "reversal", "repayment"];

interface Leg {
  kind: "grant" | "purchase" | "transfer" | "reserve" | "charge" | "release" | "overage" | "expire" | "reversal" | "repayment";
  from: string;
  to: string;
  amount: MicroCredits;
}

export interface KyselyLedgerOptions {
  /** Attempts for a transaction that hits a serialization failure or deadlock. Default 10. */
  maxAttempts?: number;
}

/**
 * The kysely (PostgreSQL or PGlite) ledger. Run `creditMigrations` first.
 *
 * Given a `Kysely` instance, each call runs in its own transaction and is retried on
 * serialization failures and deadlocks. Given a `Transaction`, calls join it (no retry), so a
 * host can write to the ledger and its own tables atomically.
 *
 * @example
 * const ledger = createKyselyLedger(db);
 * const wallet = await ledger.openWallet({ userId: "u_1" });
 * await ledger.grant({ account: wallet.id, amount: 5_000_000, idempotencyKey: "welcome:u_1" });
 * const hold = await ledger.reserve({ account: wallet.id, amount: 2_000_000, idempotencyKey: "run:r1", ttlMs: 3_600_000 });
 * await ledger.settle(hold.id, 1_234_567);
 */
export function createKyselyLedger(db: Kysely<any>, options: KyselyLedgerOptions = {}): Ledger {
  const ledger = new KyselyLedger(db as Db, options.maxAttempts ?? 10);
  ledgerDatabases.set(ledger, db);
  return ledger;
}

const ledgerDatabases = new WeakMap<Ledger, Kysely<any>>();

/** The database a ledger made by `createKyselyLedger` writes to; undefined for any other implementation. */
export function ledgerDatabaseOf(ledger: Ledger): Kysely<any> | undefined {
  return ledgerDatabases.get(ledger);
}

class KyselyLedger implements Ledger {
  constructor(
    private readonly db: Db,
    private readonly maxAttempts: number,
  ) {}

  private async tx<T>(work: (trx: Transaction<CreditTables> | Db) => Promise<T>): Promise<T> {
    try {
      if (this.db.isTransaction) return await work(this.db);
      return await retryTransaction(this.db, work, this.maxAttempts);
    } catch (error) {
      throw boundError(error);
    }
  }

  /**
   * Claims the idempotency key, locks the rows the operation works on and runs `work`, in one
   * transaction; the claim and the lock share a round trip. `lock` is a SELECT ... FOR UPDATE that
   * also selects `(select count(*) from claim)::int as claimed`.
   *
   * A key already claimed by a committed operation with the same parameters replays that
   * operation's result from the rows it wrote (the parameters are equal, so only generated ids
   * need looking up). When `lock` finds no rows, `work` reports the missing row.
   */
  private async operation<T, L extends { claimed: number }>(
    key: string,
    kind: string,
    params: readonly unknown[],
    lock: RawBuilder<L>,
    work: (trx: Transaction<CreditTables> | Db, locked: L[]) => Promise<T>,
    replay: (trx: Transaction<CreditTables> | Db) => Promise<T>,
  ): Promise<T> {
    const hash = hashRequest(kind, params);
    return this.tx(async (trx) => {
      const { rows } = await sql<L>`
        with claim as (
          insert into ledger_operations (idempotency_key, kind, request_hash) values (${key}, ${kind}, ${hash})
          on conflict (idempotency_key) do nothing returning 1
        )
        ${lock}`.execute(trx);
      if (rows.length > 0 && rows[0]!.claimed === 0) {
        const prior = await trx
          .selectFrom("ledger_operations")
          .select(["kind", "request_hash"])
          .where("idempotency_key", "=", key)
          .executeTakeFirstOrThrow();
        if (prior.kind !== kind || prior.request_hash !== hash) throw new IdempotencyConflictError(key);
        return replay(trx);
      }
      return work(trx, rows);
    });
  }

  /** The lock query for `operation`: wallets and holds in id order (the global lock order). */
  private lockAccountsQuery(ids: string[]) {
    if (ids.length === 0) throw new LedgerInputError("The operation names no wallet");
    return sql<{ id: string; kind: string; balance: string | number; debt: string | number; claimed: number }>`
      select a.id, a.kind, a.balance, a.debt, (select count(*) from claim)::int as claimed
      from ledger_accounts a where a.id in (${sql.join(ids)}) order by a.id for update of a`;
  }

  /** Transaction ids an operation wrote, in leg order. */
  private async transactionsOf(trx: Transaction<CreditTables> | Db, key: string): Promise<string[]> {
    const rows = await trx.selectFrom("ledger_transactions").select(["id", "kind"]).where("operation_key", "=", key).execute();
    return rows.sort((a, b) => LEG_ORDER.indexOf(a.kind) - LEG_ORDER.indexOf(b.kind)).map((r) => r.id);
  }

  /** Locks the given accounts in the global order (non-system by id, then system) and returns their rows. */
  private async lockAccounts(trx: Transaction<CreditTables> | Db, ids: string[]) {
    const rows = await trx
      .selectFrom("ledger_accounts")
      .select(["id", "kind", "balance", "debt", "wallet_id"])
      .where("id", "in", ids)
      .orderBy("id")
      .forUpdate()
      .execute();
    return new Map(rows.map((row) => [row.id, { ...row, balance: micro(row.balance), debt: micro(row.debt) }]));
  }

  /**
   * Writes one transaction row and two entries per leg, plus an optional last statement, in a
   * single round trip. Entries go in lock order (wallets and holds by id, then system accounts),
   * so the balance updates of concurrent writers never deadlock.
   */
  private async writeLegs<R = never>(
    trx: Transaction<CreditTables> | Db,
    operationKey: string,
    legs: Leg[],
    reservationId: string | null,
    last?: RawBuilder<R>,
  ): Promise<{ ids: string[]; rows: R[] }> {
    const ids = legs.map(() => randomUUID());
    const entries = legs.flatMap((leg, i) => [
      { transaction: ids[i]!, account: leg.from, amount: -leg.amount },
      { transaction: ids[i]!, account: leg.to, amount: leg.amount },
    ]);
    entries.sort((a, b) => Number(isSystemId(a.account)) - Number(isSystemId(b.account)) || (a.account < b.account ? -1 : a.account > b.account ? 1 : 0));
    const transactions = sql.join(legs.map((leg, i) => sql`(${ids[i]}, ${operationKey}, ${leg.kind}, ${reservationId})`));
    const values = sql.join(entries.map((e) => sql`(${e.transaction}, ${e.account}, ${e.amount})`));
    const result = await sql<R>`
      with t as (insert into ledger_transactions (id, operation_key, kind, reservation_id) values ${transactions}),
      e as (insert into ledger_entries (transaction_id, account_id, amount) values ${values})
      ${last ?? sql`select 1`}`.execute(trx);
    return { ids, rows: result.rows };
  }

  async openWallet(owner: WalletOwner): Promise<LedgerAccount> {
    const parsed = parse(WalletOwnerSchema, owner, "wallet owner");
    const kind: AccountKind = "userId" in parsed ? "user_wallet" : "team_wallet";
    const ownerId = "userId" in parsed ? parsed.userId : parsed.teamId;
    return this.tx(async (trx) => {
      const id = randomUUID();
      const inserted = await trx
        .insertInto("ledger_accounts")
        .values({ id, kind, owner_id: ownerId })
        .onConflict((oc) => oc.columns(["kind", "owner_id"]).doNothing())
        .returning("id")
        .executeTakeFirst();
      if (inserted) await trx.insertInto("ledger_accounts").values({ id: holdIdOf(id), kind: "hold", wallet_id: id }).execute();
      const row = await trx.selectFrom("ledger_accounts").selectAll().where("kind", "=", kind).where("owner_id", "=", ownerId).executeTakeFirstOrThrow();
      return toAccount(row);
    });
  }

  async getAccount(id: string): Promise<LedgerAccount> {
    const row = await this.db.selectFrom("ledger_accounts").selectAll().where("id", "=", parse(Id, id, "account id")).executeTakeFirst();
    if (!row) throw new AccountNotFoundError(id);
    return toAccount(row);
  }

  async grant(input: TransferInput): Promise<TransferResult> {
    const { account, amount, idempotencyKey } = parse(TransferInputSchema, input, "grant");
    return this.move("grant", SYSTEM_ACCOUNTS.grants, account, amount, idempotencyKey);
  }

  async purchase(input: TransferInput): Promise<TransferResult> {
    const { account, amount, idempotencyKey } = parse(TransferInputSchema, input, "purchase");
    return this.move("purchase", SYSTEM_ACCOUNTS.purchases, account, amount, idempotencyKey);
  }

  async transfer(input: WalletTransferInput): Promise<TransferResult> {
    const { from, to, amount, idempotencyKey } = parse(WalletTransferSchema, input, "transfer");
    if (from === to) throw new LedgerInputError("A transfer needs two different accounts");
    // Only grant() and purchase() draw on system accounts: a transfer from one would skip the
    // balance check and mint credits for whoever chose the source.
    if (isSystemId(from)) throw new AccountNotFoundError(from, "is a system account; transfers move credits between wallets only");
    return this.move("transfer", from, to, amount, idempotencyKey);
  }

  private move(kind: TransferKind, from: string, to: string, amount: MicroCredits, key: string): Promise<TransferResult> {
    if (isSystemId(to)) throw new AccountNotFoundError(to, "is a system account, not a wallet");
    const source = isSystemId(from) ? undefined : from;
    const wallets = source ? [from, to] : [to];
    return this.operation(key, kind, [from, to, amount], this.lockAccountsQuery(wallets), async (trx, rows) => {
      const target = lockedWallet(to, rows.find((row) => row.id === to));
      if (source) {
        const wallet = lockedWallet(source, rows.find((row) => row.id === source));
        if (wallet.debt > 0) throw new WalletInDebtError(source, wallet.debt);
        if (wallet.balance < amount) throw new InsufficientCreditsError(source, amount, wallet.balance);
      }
      checkHeadroom(to, target.balance, amount);
      // Credits arriving at a wallet in debt pay the debt first.
      const repaid = Math.min(target.debt, amount);
      const legs: Leg[] = [{ kind, from, to, amount }];
      if (repaid > 0) legs.push({ kind: "repayment", from: to, to: SYSTEM_ACCOUNTS.purchases, amount: repaid });
      const { ids } = await this.writeLegs(trx, key, legs, null);
      if (repaid > 0) await trx.updateTable("ledger_accounts").set({ debt: sql`debt - ${repaid}` }).where("id", "=", to).execute();
      return { transactionId: ids[0]!, kind, from, to, amount, idempotencyKey: key };
    }, async (trx) => ({ transactionId: (await this.transactionsOf(trx, key))[0]!, kind, from, to, amount, idempotencyKey: key }));
  }

  async reverse(input: ReversalInput): Promise<ReversalResult> {
    const { account, amount, idempotencyKey, reason } = parse(ReversalSchema, input, "reversal");
    if (isSystemId(account)) throw new AccountNotFoundError(account, "is a system account, not a wallet");
    return this.operation(
      idempotencyKey,
      "reverse",
      [account, amount, reason],
      this.lockAccountsQuery([account]),
      async (trx, rows) => {
        const wallet = lockedWallet(account, rows[0]);
        const recovered = Math.min(amount, wallet.balance);
        const debt = amount - recovered;
        if (wallet.debt + debt > Number.MAX_SAFE_INTEGER) throw new LedgerInputError(`Account ${account} would owe more than ${Number.MAX_SAFE_INTEGER} micro-credits`);
        let transactionId: string | null = null;
        if (recovered > 0) {
          transactionId = (await this.writeLegs(trx, idempotencyKey, [{ kind: "reversal", from: account, to: SYSTEM_ACCOUNTS.purchases, amount: recovered }], null)).ids[0]!;
        }
        await trx.insertInto("ledger_reversals").values({ idempotency_key: idempotencyKey, account_id: account, reason, amount, recovered, debt }).execute();
        if (debt > 0) await trx.updateTable("ledger_accounts").set({ debt: sql`debt + ${debt}` }).where("id", "=", account).execute();
        return { account, amount, reason, recovered, debt, transactionId, idempotencyKey };
      },
      async (trx) => {
        const row = await trx.selectFrom("ledger_reversals").selectAll().where("idempotency_key", "=", idempotencyKey).executeTakeFirstOrThrow();
        const [transactionId] = await this.transactionsOf(trx, idempotencyKey);
        return { account, amount, reason, recovered: micro(row.recovered), debt: micro(row.debt), transactionId: transactionId ?? null, idempotencyKey };
      },
    );
  }

  async reserve(input: ReserveInput): Promise<Reservation> {
    const { account, amount, idempotencyKey, ttlMs, reference } = parse(ReserveSchema, input, "reservation");
    return this.operation(
      idempotencyKey,
      "reserve",
      [account, amount, ttlMs, reference ?? null],
      this.lockAccountsQuery([account]),
      async (trx, locked) => {
        const hold = holdIdOf(account);
        const wallet = lockedWallet(account, locked[0]);
        if (wallet.debt > 0) throw new WalletInDebtError(account, wallet.debt);
        if (wallet.balance < amount) throw new InsufficientCreditsError(account, amount, wallet.balance);
        const id = randomUUID();
        const { ids, rows } = await this.writeLegs<ReservationRow>(
          trx,
          idempotencyKey,
          [{ kind: "reserve", from: account, to: hold, amount }],
          id,
          sql<ReservationRow>`insert into ledger_reservations (id, account_id, hold_account_id, amount, status, reference, idempotency_key, expires_at)
            values (${id}, ${account}, ${hold}, ${amount}, 'open', ${reference ?? null}, ${idempotencyKey}, now() + ${ttlMs} * interval '1 millisecond')
            returning *`,
        );
        return toReservation(rows[0]!, ids[0]!);
      },
      async (trx) => {
        const row = await trx.selectFrom("ledger_reservations").selectAll().where("idempotency_key", "=", idempotencyKey).executeTakeFirstOrThrow();
        return { ...toReservation(row, (await this.transactionsOf(trx, idempotencyKey))[0]!), replayed: true };
      },
    );
  }

  async settle(reservationId: string, actual: MicroCredits, options?: CloseOptions): Promise<Settlement> {
    const id = parse(Id, reservationId, "reservation id");
    const amount = parse(ActualSchema, actual, "actual amount");
    const key = parse(CloseSchema, options, "options")?.idempotencyKey ?? `settle:${id}`;
    return this.operation(
      key,
      "settle",
      [id, amount],
      this.lockReservationQuery(id),
      async (trx, rows) => {
        const row = this.openReservation(id, rows[0]);
        // A lapsed hold belongs to the sweeper: settling it late would charge a run that was
        // already given up on (and race the sweeper's release).
        if (rows[0]!.lapsed) throw new ReservationClosedError(id, "expired");
        return this.close(trx, key, row, "settled", amount);
      },
      (trx) => this.replayClose(trx, key, id),
    );
  }

  async release(reservationId: string, options?: CloseOptions): Promise<Settlement> {
    const id = parse(Id, reservationId, "reservation id");
    const key = parse(CloseSchema, options, "options")?.idempotencyKey ?? `release:${id}`;
    return this.operation(
      key,
      "release",
      [id],
      this.lockReservationQuery(id),
      async (trx, rows) => this.close(trx, key, this.openReservation(id, rows[0]), "released", 0),
      (trx) => this.replayClose(trx, key, id),
    );
  }

  async sweepExpiredReservations(options: SweepOptions = {}): Promise<Settlement[]> {
    const limit = parse(SweepLimit, options.limit ?? 500, "sweep limit");
    return this.tx(async (trx) => {
      const due = await trx
        .selectFrom("ledger_reservations")
        .selectAll()
        .where("status", "=", "open")
        .where("expires_at", "<=", sql<Date>`now()`)
        .orderBy("account_id")
        .orderBy("id")
        .limit(limit)
        .forUpdate()
        .skipLocked()
        .execute();
      const settlements: Settlement[] = [];
      for (const row of due) {
        const key = `expire:${row.id}`;
        await trx.insertInto("ledger_operations").values({ idempotency_key: key, kind: "expire", request_hash: hashRequest("expire", [row.id]) }).execute();
        settlements.push(await this.close(trx, key, row, "expired", 0));
      }
      return settlements;
    });
  }

  private lockReservationQuery(id: string) {
    return sql<ReservationRow & { lapsed: boolean; claimed: number }>`
      select r.*, r.expires_at <= now() as lapsed, (select count(*) from claim)::int as claimed from ledger_reservations r where r.id = ${id} for update of r`;
  }

  private openReservation(id: string, row: ReservationRow | undefined): ReservationRow {
    if (!row) throw new ReservationNotFoundError(id);
    if (row.status !== "open") throw new ReservationClosedError(id, row.status);
    return row;
  }

  private async close(
    trx: Transaction<CreditTables> | Db,
    key: string,
    row: ReservationRow,
    status: Settlement["status"],
    actual: MicroCredits,
  ): Promise<Settlement> {
    const reserved = micro(row.amount);
    const fromHold = Math.min(actual, reserved);
    const rest = reserved - fromHold;
    const over = actual - fromHold;
    let overage = 0;
    let repaid = 0;
    if (over > 0 || rest > 0) {
      const wallet = (await this.lockAccounts(trx, [row.account_id])).get(row.account_id)!;
      // A wallet in debt is frozen: usage above the hold is not drawn from it, and credits the
      // hold returns pay the debt first.
      overage = wallet.debt > 0 ? 0 : Math.min(over, wallet.balance);
      repaid = Math.min(wallet.debt, rest);
    }
    const legs: Leg[] = [];
    if (fromHold > 0) legs.push({ kind: "charge", from: row.hold_account_id, to: SYSTEM_ACCOUNTS.revenue, amount: fromHold });
    if (rest > 0) legs.push({ kind: status === "expired" ? "expire" : "release", from: row.hold_account_id, to: row.account_id, amount: rest });
    if (overage > 0) legs.push({ kind: "overage", from: row.account_id, to: SYSTEM_ACCOUNTS.revenue, amount: overage });
    if (repaid > 0) legs.push({ kind: "repayment", from: row.account_id, to: SYSTEM_ACCOUNTS.purchases, amount: repaid });
    const charged = fromHold + overage;
    const shortfall = over - overage;
    if (repaid > 0) await trx.updateTable("ledger_accounts").set({ debt: sql`debt - ${repaid}` }).where("id", "=", row.account_id).execute();
    const { ids } = await this.writeLegs(
      trx,
      key,
      legs,
      row.id,
      sql`update ledger_reservations set status = ${status}, charged = ${charged}, released = ${rest}, shortfall = ${shortfall}, closed_at = now()
        where id = ${row.id}`,
    );
    return { reservationId: row.id, accountId: row.account_id, status, reserved, charged, released: rest, shortfall, transactionIds: ids, idempotencyKey: key };
  }

  private async replayClose(trx: Transaction<CreditTables> | Db, key: string, id: string): Promise<Settlement> {
    const row = await trx.selectFrom("ledger_reservations").selectAll().where("id", "=", id).executeTakeFirstOrThrow();
    return {
      reservationId: row.id,
      accountId: row.account_id,
      status: row.status as Settlement["status"],
      reserved: micro(row.amount),
      charged: micro(row.charged),
      released: micro(row.released),
      shortfall: micro(row.shortfall),
      transactionIds: await this.transactionsOf(trx, key),
      idempotencyKey: key,
    };
  }

  async getReservation(id: string): Promise<Reservation> {
    const row = await this.db
      .selectFrom("ledger_reservations as r")
      .innerJoin("ledger_transactions as t", (join) => join.onRef("t.reservation_id", "=", "r.id").on("t.kind", "=", "reserve"))
      .selectAll("r")
      .select("t.id as transaction_id")
      .where("r.id", "=", parse(Id, id, "reservation id"))
      .executeTakeFirst();
    if (!row) throw new ReservationNotFoundError(id);
    return toReservation(row, row.transaction_id);
  }

  async listEntries(accountId: string, options: { limit?: number; beforeId?: string } = {}): Promise<LedgerEntry[]> {
    const limit = parse(EntriesLimit, options.limit ?? 100, "limit");
    let query = this.db
      .selectFrom("ledger_entries as e")
      .innerJoin("ledger_transactions as t", "t.id", "e.transaction_id")
      .select(["e.id", "e.transaction_id", "e.account_id", "e.amount", "e.created_at", "t.kind", "t.reservation_id"])
      .where("e.account_id", "=", parse(Id, accountId, "account id"))
      .orderBy("e.id", "desc")
      .limit(limit);
    if (options.beforeId !== undefined) query = query.where("e.id", "<", sql<string>`${parse(EntryCursor, options.beforeId, "cursor")}::bigint`);
    const rows = await query.execute();
    return rows.map((row) => ({
      id: String(row.id),
      transactionId: row.transaction_id,
      transactionKind: row.kind,
      accountId: row.account_id,
      amount: micro(row.amount),
      reservationId: row.reservation_id,
      createdAt: row.created_at,
    }));
  }

  async verify(): Promise<LedgerCheck> {
    const db = this.db as Kysely<any>;
    const total = await sql<{ total: string | number | null }>`select coalesce(sum(amount), 0)::text as total from ledger_entries`.execute(db);
    const unbalanced = await sql<{ id: string }>`
      select t.id from ledger_transactions t left join ledger_entries e on e.transaction_id = t.id
      group by t.id having count(e.id) <> 2 or coalesce(sum(e.amount), 0) <> 0`.execute(db);
    const outOfStep = await sql<{ id: string; balance: string; total: string }>`
      select a.id, a.balance::text as balance, coalesce(sum(e.amount), 0)::text as total
      from ledger_accounts a left join ledger_entries e on e.account_id = a.id
      group by a.id, a.balance having a.balance <> coalesce(sum(e.amount), 0)`.execute(db);
    const negative = await sql<{ id: string }>`
      select id from ledger_accounts where balance < 0 and kind not in ('revenue', 'grants', 'purchases')`.execute(db);
    const sumOfEntries = micro(total.rows[0]?.total ?? 0);
    const check: LedgerCheck = {
      ok: false,
      sumOfEntries,
      unbalancedTransactions: unbalanced.rows.map((r) => r.id),
      accountsOutOfStep: outOfStep.rows.map((r) => ({ accountId: r.id, balance: micro(r.balance), sumOfEntries: micro(r.total) })),
      negativeWallets: negative.rows.map((r) => r.id),
    };
    check.ok = sumOfEntries === 0 && check.unbalancedTransactions.length === 0 && check.accountsOutOfStep.length === 0 && check.negativeWallets.length === 0;
    return check;
  }
}

function toAccount(row: Selectable<CreditTables["ledger_accounts"]>): LedgerAccount {
  return {
    id: row.id,
    kind: row.kind as AccountKind,
    ownerId: row.owner_id,
    walletId: row.wallet_id,
    balance: micro(row.balance),
    debt: micro(row.debt),
    createdAt: row.created_at,
  };
}

function toReservation(row: ReservationRow, transactionId: string): Reservation {
  return {
    id: row.id,
    accountId: row.account_id,
    holdAccountId: row.hold_account_id,
    amount: micro(row.amount),
    status: row.status as ReservationStatus,
    reference: row.reference,
    expiresAt: new Date(row.expires_at),
    charged: row.charged == null ? null : micro(row.charged),
    released: row.released == null ? null : micro(row.released),
    shortfall: row.shortfall == null ? null : micro(row.shortfall),
    idempotencyKey: row.idempotency_key,
    transactionId,
  };
}
