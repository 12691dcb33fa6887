import { randomUUID } from "node:crypto";
import { sql, type Kysely, type Selectable, type Transaction } from "kysely";
import * as z from "zod";
import { clockOption, functionOption, parseOptions } from "../options.js";
import { MicroCredits } from "../money.js";
import { periodWindow } from "./periods.js";
import type { BudgetTables } from "./tables.js";
import {
  BudgetExceededError,
  BudgetInputError,
  BudgetInput,
  BudgetReservationNotFoundError,
  BudgetPeriod,
  BudgetScope,
  DEFAULT_THRESHOLDS,
  BudgetKeyConflictError,
  BudgetThresholds,
  type Budget,
  type BudgetAlert,
  type BudgetChargeResult,
  type BudgetNotifier,
  type Budgets,
  type BudgetSettlement,
  type BudgetStatus,
} from "./types.js";

type Db = Kysely<BudgetTables>;
type Trx = Transaction<BudgetTables>;

const BudgetsOptions = z
  .object({
    /** Where alerts go. Without one, alerts are still recorded and can be delivered later. */
    notifier: z.custom<BudgetNotifier>((v) => typeof (v as BudgetNotifier)?.notify === "function", "notifier must have notify()").optional(),
    /** Default alert thresholds in percent. Default 50, 80, 100. */
    thresholds: BudgetThresholds.default([...DEFAULT_THRESHOLDS]),
    /** Called when a notifier throws; the alert stays pending for `deliverPendingAlerts`. */
    onNotifyError: functionOption<(error: unknown, alert: BudgetAlert) => void>().optional(),
    now: clockOption(),
  })
  .strict();
export type BudgetsOptions = z.input<typeof BudgetsOptions>;

const Scopes = z.array(BudgetScope).max(20);
const IdempotencyKey = z.string().min(1).max(200).regex(/^[^\u0000]*$/, "must not contain NUL");

function parse<T extends z.ZodType>(schema: T, value: unknown, what: string): z.output<T> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new BudgetInputError(`Invalid ${what}: ${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

const toNumber = (v: string | number | bigint): number => Number(v);

function toBudget(row: Selectable<BudgetTables["budgets"]>): Budget {
  return {
    id: row.id,
    scope: { kind: row.scope_kind as Budget["scope"]["kind"], id: row.scope_id },
    period: row.period as Budget["period"],
    limit: toNumber(row.limit_micros),
    thresholds: JSON.parse(row.thresholds) as number[],
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

/** Canonical text of a scope list, so a replayed key can be compared with its first use. */
function canonicalScopes(scopes: BudgetScope[]): string {
  const keys = [...new Set(scopes.map((s) => `${s.kind}:${s.id}`))].sort();
  return JSON.stringify(keys);
}

function statusOf(budget: Budget, spent: number, at: Date): BudgetStatus {
  const window = periodWindow(budget.period, at);
  return {
    budget,
    periodKey: window.key,
    periodStart: window.start,
    resetsAt: window.end,
    spent,
    remaining: Math.max(0, budget.limit - spent),
  };
}

/** BudgetThresholds reached at `spent`, in integer arithmetic (no float rounding at the boundary). */
function reached(thresholds: number[], spent: number, limit: number): number[] {
  const s = BigInt(spent) * 100n;
  return thresholds.filter((t) => s >= BigInt(t) * BigInt(limit));
}

/**
 * The kysely `Budgets`, whose writes can also join a transaction of the caller's: a host that
 * must order a budget change against its own locks (say, the row of the user it belongs to,
 * which an account erasure takes first) writes inside the transaction that holds them.
 *
 * @example
 * await db.transaction().execute(async (trx) => {
 *   await lockUser(trx, userId); // the host's lock
 *   await budgets.setBudgetIn(trx, { scope: { kind: "user", id: userId }, period: "monthly", limit: 5_000_000 });
 * });
 */
export interface KyselyBudgets extends Budgets {
  /** `setBudget` inside the caller's transaction `trx`. */
  setBudgetIn(trx: Transaction<any>, input: BudgetInput): Promise<Budget>;
  /** `removeBudget` inside the caller's transaction `trx`. */
  removeBudgetIn(trx: Transaction<any>, scope: BudgetScope, period: BudgetPeriod): Promise<boolean>;
}

/**
 * The kysely (PostgreSQL or PGlite) implementation of `Budgets`. Run `budgetMigrations` first.
 * Charges lock the spend rows of their budgets in id order, so concurrent charges serialise per
 * budget without deadlocks; `commit` adds only where `spent + amount <= limit` holds at update time.
 *
 * @example
 * const budgets = createKyselyBudgets(db, { notifier: webhookNotifier({ url, secret }) });
 * await budgets.setBudget({ scope: { kind: "team", id: teamId }, period: "monthly", limit: 50_000_000 });
 * await budgets.check(scopes, estimate);              // 402 before the run when it cannot fit
 * await budgets.record(scopes, actualCost, `run:${runId}`); // after the run is charged
 */
export function createKyselyBudgets(db: Kysely<any>, input: BudgetsOptions = {}): KyselyBudgets {
  const options = parseOptions(BudgetsOptions, input, "budgets");
  const kdb = db as Db;
  const now = options.now;

  async function budgetsOf(q: Db | Trx, scopes: BudgetScope[]): Promise<Budget[]> {
    if (scopes.length === 0) return [];
    const rows = await q
      .selectFrom("budgets")
      .selectAll()
      .where((eb) => eb.or(scopes.map((s) => eb.and([eb("scope_kind", "=", s.kind), eb("scope_id", "=", s.id)]))))
      .orderBy("id")
      .execute();
    return rows.map(toBudget);
  }

  async function statuses(q: Db | Trx, scopes: BudgetScope[], at: Date): Promise<BudgetStatus[]> {
    const budgets = await budgetsOf(q, scopes);
    if (budgets.length === 0) return [];
    const keys = budgets.map((b) => ({ b, key: periodWindow(b.period, at).key }));
    const rows = await q
      .selectFrom("budget_spend")
      .select(["budget_id", "period_key", "spent_micros"])
      .where((eb) => eb.or(keys.map(({ b, key }) => eb.and([eb("budget_id", "=", b.id), eb("period_key", "=", key)]))))
      .execute();
    const spent = new Map(rows.map((r) => [`${r.budget_id}|${r.period_key}`, toNumber(r.spent_micros)]));
    return keys.map(({ b, key }) => statusOf(b, spent.get(`${b.id}|${key}`) ?? 0, at));
  }

  async function deliver(alerts: BudgetAlert[]): Promise<number> {
    if (!options.notifier) return 0;
    let delivered = 0;
    for (const alert of alerts) {
      let outcome: { delivered_at: Date; last_error: null } | { last_error: string };
      try {
        await options.notifier.notify(alert);
        outcome = { delivered_at: now(), last_error: null };
        delivered += 1;
      } catch (error) {
        outcome = { last_error: (error instanceof Error ? error.message : String(error)).slice(0, 1000) };
        options.onNotifyError?.(error, alert);
      }
      await kdb
        .updateTable("budget_alerts")
        .set((eb) => ({ ...outcome, attempts: eb("attempts", "+", 1) }))
        .where("budget_id", "=", alert.budget.id)
        .where("period_key", "=", alert.periodKey)
        .where("threshold", "=", alert.threshold)
        .execute();
    }
    return delivered;
  }

  async function fireAlerts(trx: Trx, budget: Budget, periodKey: string, spent: number, at: Date): Promise<BudgetAlert[]> {
    const crossed = reached(budget.thresholds, spent, budget.limit);
    if (crossed.length === 0) return [];
    const fired = await trx
      .insertInto("budget_alerts")
      .values(
        crossed.map((threshold) => ({
          budget_id: budget.id,
          period_key: periodKey,
          threshold,
          spent_micros: spent,
          limit_micros: budget.limit,
          fired_at: at,
        })),
      )
      .onConflict((oc) => oc.columns(["budget_id", "period_key", "threshold"]).doNothing())
      .returning("threshold")
      .execute();
    return fired.map(({ threshold }) => ({ id: `${budget.id}:${periodKey}:${threshold}`, budget, periodKey, threshold, spent, limit: budget.limit, firedAt: at }));
  }

  async function charge(mode: "record" | "commit" | "reserve", scopes: BudgetScope[], amount: number, key: string): Promise<BudgetChargeResult> {
    const result = await kdb.transaction().execute((trx) => chargeIn(trx, mode, scopes, amount, key));
    // Delivery happens after commit: the alert row is the record that it fired; a failed
    // delivery stays pending rather than undoing the charge.
    await deliver(result.alerts);
    return result;
  }

  /** `charge` inside the caller's transaction; alerts are returned, not delivered (the caller delivers after commit). */
  async function chargeIn(trx: Trx, mode: "record" | "commit" | "reserve", scopesIn: BudgetScope[], amountIn: number, keyIn: string): Promise<BudgetChargeResult> {
    const scopes = parse(Scopes, scopesIn, "budget scopes");
    const amount = parse(MicroCredits, amountIn, "amount (micro-credits)");
    const key = parse(IdempotencyKey, keyIn, "idempotency key");
    const at = now();
    const canonical = canonicalScopes(scopes);
    const budgets = await budgetsOf(trx, scopes);
    const parts = budgets.map((b) => ({ budgetId: b.id, periodKey: periodWindow(b.period, at).key }));
    const inserted = await trx
      .insertInto("budget_charges")
      .values({ idempotency_key: key, amount_micros: amount, scopes: canonical, mode, created_at: at, parts: JSON.stringify(parts) })
      .onConflict((oc) => oc.column("idempotency_key").doNothing())
      .returning("idempotency_key")
      .executeTakeFirst();
    if (!inserted) {
      const first = await trx.selectFrom("budget_charges").selectAll().where("idempotency_key", "=", key).executeTakeFirstOrThrow();
      if (toNumber(first.amount_micros) !== amount || first.scopes !== canonical || first.mode !== mode) throw new BudgetKeyConflictError(key);
      return { replayed: true, statuses: await statuses(trx, scopes, at), alerts: [] };
    }

    const out: BudgetStatus[] = [];
    const alerts: BudgetAlert[] = [];
    for (const [i, budget] of budgets.entries()) {
      const periodKey = parts[i]!.periodKey;
      await trx
        .insertInto("budget_spend")
        .values({ budget_id: budget.id, period_key: periodKey, spent_micros: 0 })
        .onConflict((oc) => oc.columns(["budget_id", "period_key"]).doNothing())
        .execute();
      let update = trx
        .updateTable("budget_spend")
        .set({ spent_micros: sql`spent_micros + ${amount}` })
        .where("budget_id", "=", budget.id)
        .where("period_key", "=", periodKey);
      if (mode !== "record") {
        // Re-evaluated after any row lock wait, so a concurrent commit is always counted.
        update = update.where(sql<boolean>`spent_micros + ${amount} <= (select limit_micros from budgets where id = ${budget.id})`);
      }
      const row = await update.returning("spent_micros").executeTakeFirst();
      if (!row) {
        const current = await trx
          .selectFrom("budget_spend")
          .select("spent_micros")
          .where("budget_id", "=", budget.id)
          .where("period_key", "=", periodKey)
          .executeTakeFirstOrThrow();
        throw new BudgetExceededError(statusOf(budget, toNumber(current.spent_micros), at), amount);
      }
      const spent = toNumber(row.spent_micros);
      out.push(statusOf(budget, spent, at));
      if (amount > 0) alerts.push(...(await fireAlerts(trx, budget, periodKey, spent, at)));
    }
    return { replayed: false, statuses: out, alerts };
  }

  async function settle(key: string, actual: number): Promise<BudgetSettlement> {
    const result = await kdb.transaction().execute((trx) => settleIn(trx, key, actual));
    await deliver(result.alerts);
    return result;
  }

  /** `settle` inside the caller's transaction; alerts are returned, not delivered. */
  async function settleIn(trx: Trx, keyIn: string, actualIn: number): Promise<BudgetSettlement> {
    const key = parse(IdempotencyKey, keyIn, "idempotency key");
    const actual = parse(MicroCredits, actualIn, "actual amount (micro-credits)");
    const at = now();
    const row = await trx
      .selectFrom("budget_charges")
      .selectAll()
      .where("idempotency_key", "=", key)
      .where("mode", "=", "reserve")
      .forUpdate()
      .executeTakeFirst();
    if (!row) throw new BudgetReservationNotFoundError(key);
    const reserved = toNumber(row.amount_micros);
    const parts = JSON.parse(row.parts) as Array<{ budgetId: string; periodKey: string }>;
    const budgets = new Map(
      parts.length === 0
        ? []
        : (await trx.selectFrom("budgets").selectAll().where("id", "in", parts.map((p) => p.budgetId)).execute()).map((r) => [r.id, toBudget(r)] as const),
    );
    const current = async () => {
      const out: BudgetStatus[] = [];
      for (const part of parts) {
        const budget = budgets.get(part.budgetId);
        if (!budget) continue;
        const spend = await trx
          .selectFrom("budget_spend")
          .select("spent_micros")
          .where("budget_id", "=", part.budgetId)
          .where("period_key", "=", part.periodKey)
          .executeTakeFirst();
        out.push(statusOf(budget, spend ? toNumber(spend.spent_micros) : 0, row.created_at));
      }
      return out;
    };
    if (row.settled_at) {
      if (toNumber(row.settled_micros!) !== actual) throw new BudgetKeyConflictError(key);
      return { replayed: true, reserved, settled: actual, statuses: await current(), alerts: [] };
    }
    const delta = actual - reserved;
    const out: BudgetStatus[] = [];
    const alerts: BudgetAlert[] = [];
    for (const part of [...parts].sort((a, b) => (a.budgetId < b.budgetId ? -1 : 1))) {
      const budget = budgets.get(part.budgetId);
      if (!budget) continue; // removed since: nothing to correct
      const updated = await trx
        .updateTable("budget_spend")
        .set({ spent_micros: sql`greatest(0, spent_micros + ${delta})` })
        .where("budget_id", "=", part.budgetId)
        .where("period_key", "=", part.periodKey)
        .returning("spent_micros")
        .executeTakeFirst();
      if (!updated) continue;
      const spent = toNumber(updated.spent_micros);
      out.push(statusOf(budget, spent, row.created_at));
      if (delta > 0) alerts.push(...(await fireAlerts(trx, budget, part.periodKey, spent, at)));
    }
    await trx.updateTable("budget_charges").set({ settled_micros: actual, settled_at: at }).where("idempotency_key", "=", key).execute();
    return { replayed: false, reserved, settled: actual, statuses: out, alerts };
  }

  async function setBudgetIn(q: Db | Trx, raw: BudgetInput): Promise<Budget> {
    const input = parse(BudgetInput, raw, "budget");
    const at = now();
    const row = await q
      .insertInto("budgets")
      .values({
        id: randomUUID(),
        scope_kind: input.scope.kind,
        scope_id: input.scope.id,
        period: input.period,
        limit_micros: input.limit,
        thresholds: JSON.stringify(input.thresholds ?? options.thresholds),
        created_at: at,
        updated_at: at,
      })
      .onConflict((oc) =>
        oc.columns(["scope_kind", "scope_id", "period"]).doUpdateSet((eb) => ({
          limit_micros: eb.ref("excluded.limit_micros"),
          thresholds: eb.ref("excluded.thresholds"),
          updated_at: eb.ref("excluded.updated_at"),
        })),
      )
      .returningAll()
      .executeTakeFirstOrThrow();
    return toBudget(row);
  }

  async function removeBudgetIn(q: Db | Trx, scopeIn: BudgetScope, periodIn: BudgetPeriod): Promise<boolean> {
    const scope = parse(BudgetScope, scopeIn, "budget scope");
    const period = parse(BudgetPeriod, periodIn, "budget period");
    const result = await q
      .deleteFrom("budgets")
      .where("scope_kind", "=", scope.kind)
      .where("scope_id", "=", scope.id)
      .where("period", "=", period)
      .executeTakeFirst();
    return Number(result.numDeletedRows) > 0;
  }

  const api: KyselyBudgets = {
    setBudget: (input) => setBudgetIn(kdb, input),
    removeBudget: (scope, period) => removeBudgetIn(kdb, scope, period),
    setBudgetIn: (trx, input) => setBudgetIn(trx as Trx, input),
    removeBudgetIn: (trx, scope, period) => removeBudgetIn(trx as Trx, scope, period),
    listBudgets: async (scopes) => budgetsOf(kdb, parse(Scopes, scopes, "budget scopes")),
    status: async (scopes) => statuses(kdb, parse(Scopes, scopes, "budget scopes"), now()),
    async check(scopesIn, estimateIn) {
      const scopes = parse(Scopes, scopesIn, "budget scopes");
      const estimate = parse(MicroCredits, estimateIn, "estimate (micro-credits)");
      const all = await statuses(kdb, scopes, now());
      const short = all.filter((s) => s.spent + estimate > s.budget.limit).sort((a, b) => a.remaining - b.remaining);
      if (short[0]) throw new BudgetExceededError(short[0], estimate);
      return all;
    },
    record: (scopes, amount, key) => charge("record", scopes, amount, key),
    commit: (scopes, amount, key) => charge("commit", scopes, amount, key),
    reserve: (scopes, estimate, key) => charge("reserve", scopes, estimate, key),
    settle,
    async releaseStaleReservations(before) {
      const open = await kdb
        .selectFrom("budget_charges")
        .select("idempotency_key")
        .where("mode", "=", "reserve")
        .where("settled_at", "is", null)
        .where("created_at", "<", before)
        .orderBy("created_at")
        .limit(1000)
        .execute();
      let released = 0;
      for (const { idempotency_key } of open) {
        const result = await settle(idempotency_key, 0);
        if (!result.replayed) released += 1;
      }
      return released;
    },
    async forgetCharges(before) {
      const result = await kdb
        .deleteFrom("budget_charges")
        .where("created_at", "<", before)
        .where((eb) => eb.or([eb("mode", "!=", "reserve"), eb("settled_at", "is not", null)]))
        .executeTakeFirst();
      return Number(result.numDeletedRows);
    },
    async deliverPendingAlerts(olderThanMs = 60_000) {
      const rows = await kdb
        .selectFrom("budget_alerts")
        .innerJoin("budgets", "budgets.id", "budget_alerts.budget_id")
        .selectAll("budgets")
        .select([
          "budget_alerts.period_key",
          "budget_alerts.threshold",
          "budget_alerts.spent_micros as alert_spent",
          "budget_alerts.limit_micros as alert_limit",
          "budget_alerts.fired_at",
        ])
        .where("budget_alerts.delivered_at", "is", null)
        // Fresh alerts are still being delivered by the charge that fired them.
        .where("budget_alerts.fired_at", "<=", new Date(now().getTime() - olderThanMs))
        .orderBy("budget_alerts.fired_at")
        .orderBy("budget_alerts.budget_id")
        .orderBy("budget_alerts.threshold")
        .limit(500)
        .execute();
      const alerts = rows.map((r): BudgetAlert => {
        const budget = toBudget(r);
        return {
          id: `${budget.id}:${r.period_key}:${r.threshold}`,
          budget,
          periodKey: r.period_key,
          threshold: r.threshold,
          spent: toNumber(r.alert_spent),
          limit: toNumber(r.alert_limit),
          firedAt: r.fired_at,
        };
      });
      return deliver(alerts);
    },
  };
  budgetEngines.set(api, { db: kdb, chargeIn, settleIn, deliver });
  return api;
}

/** What `createSpend` needs of a kysely `Budgets`: its charges inside a caller's transaction, and delivery after commit. */
export interface BudgetEngine {
  db: Kysely<any>;
  chargeIn(trx: Transaction<any>, mode: "reserve", scopes: BudgetScope[], amount: number, key: string): Promise<BudgetChargeResult>;
  settleIn(trx: Transaction<any>, key: string, actual: number): Promise<BudgetSettlement>;
  deliver(alerts: BudgetAlert[]): Promise<number>;
}

const budgetEngines = new WeakMap<Budgets, BudgetEngine>();

/** The transaction-joinable engine behind a `Budgets` made by `createKyselyBudgets`; undefined for any other implementation. */
export function budgetEngineOf(budgets: Budgets): BudgetEngine | undefined {
  return budgetEngines.get(budgets);
}
