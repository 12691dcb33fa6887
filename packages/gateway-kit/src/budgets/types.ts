import { GatewayError } from "../errors.js";
import * as z from "zod";
import { MicroCredits } from "../money.js";

export { MicroCredits };

/** @deprecated Use `MicroCredits`, the one amount schema of credits, budgets and spend. */
export const BudgetAmount = MicroCredits;

/** Who a budget applies to. */
export const BudgetScope = z
  .object({
    kind: z.enum(["user", "team", "project"]),
    id: z.string().min(1).max(200).regex(/^[^\u0000]*$/, "must not contain NUL"),
  })
  .strict();
export type BudgetScope = z.infer<typeof BudgetScope>;

/** `daily` and `monthly` reset at UTC midnight and on the 1st; `total` never resets. */
export const BudgetPeriod = z.enum(["daily", "monthly", "total"]);
export type BudgetPeriod = z.infer<typeof BudgetPeriod>;

/** Alert thresholds in percent of the limit; 100 means "limit reached". Above 100 is allowed for overspend alerts. */
export const BudgetThresholds = z
  .array(z.number().int().min(1).max(1000))
  .max(20)
  .transform((t) => [...new Set(t)].sort((a, b) => a - b));

export const DEFAULT_THRESHOLDS: readonly number[] = [50, 80, 100];

export const BudgetInput = z
  .object({
    scope: BudgetScope,
    period: BudgetPeriod,
    /** The most that may be spent in one period, in micro-credits. */
    limit: MicroCredits,
    /** Percentages at which an alert fires; defaults to the service's thresholds (50, 80, 100). */
    thresholds: BudgetThresholds.optional(),
  })
  .strict();
export type BudgetInput = z.input<typeof BudgetInput>;

export interface Budget {
  id: string;
  scope: BudgetScope;
  period: BudgetPeriod;
  limit: MicroCredits;
  thresholds: number[];
  createdAt: Date;
  updatedAt: Date;
}

/** A budget's spend in the period that contains "now". */
export interface BudgetStatus {
  budget: Budget;
  periodKey: string;
  periodStart: Date | null;
  /** When the period resets; `null` for `total`. */
  resetsAt: Date | null;
  spent: MicroCredits;
  /** `limit - spent`, never below zero. */
  remaining: MicroCredits;
}

/** A threshold crossed for the first time in a period. */
export interface BudgetAlert {
  /** Stable per budget, period and threshold, so receivers can drop duplicates. */
  id: string;
  budget: Budget;
  periodKey: string;
  threshold: number;
  spent: MicroCredits;
  limit: MicroCredits;
  firedAt: Date;
}

/** Delivers alerts. Implementations: `webhookNotifier`, `emailNotifier`, or your own. */
export interface BudgetNotifier {
  notify(alert: BudgetAlert): Promise<void>;
}

/**
 * A run or charge would take a budget past its limit. Renders as 402 `budget_exceeded` with
 * the scope, period, limit, what is spent and what remains.
 */
export class BudgetExceededError extends GatewayError {
  readonly remaining: number;
  constructor(status: BudgetStatus, requested: number) {
    const { scope, period, limit } = status.budget;
    super(
      "budget_exceeded",
      `The ${period} budget of ${scope.kind} ${scope.id} has ${status.remaining} micro-credits left of ${limit}; ` +
        `this needs ${requested}`,
      {
        details: {
          scope,
          period,
          limit,
          spent: status.spent,
          remaining: status.remaining,
          requested,
          resetsAt: status.resetsAt?.toISOString() ?? null,
        },
      },
    );
    this.name = "BudgetExceededError";
    this.remaining = status.remaining;
  }
}

/**
 * A budget call got malformed input (a negative or fractional amount, an unknown scope kind, an id
 * with a NUL byte, ...). Renders as 400 `invalid_request`; nothing was written.
 */
export class BudgetInputError extends GatewayError {
  constructor(message: string) {
    super("invalid_request", message);
    this.name = "BudgetInputError";
  }
}

/** The same idempotency key was used with a different amount or scopes. Renders as 409. */
export class BudgetKeyConflictError extends GatewayError {
  constructor(key: string) {
    super("idempotency_conflict", `Idempotency key "${key}" was already used for a different charge`, { details: { idempotencyKey: key } });
    this.name = "BudgetKeyConflictError";
  }
}

/** No open reservation has this key. Renders as 404 `budget_reservation_not_found`. */
export class BudgetReservationNotFoundError extends GatewayError {
  constructor(key: string) {
    super("budget_reservation_not_found", `No budget reservation with key "${key}"`, { details: { idempotencyKey: key } });
    this.name = "BudgetReservationNotFoundError";
  }
}

/** What `record`, `commit` and `reserve` return. */
export interface BudgetChargeResult {
  /** True when the key had been used before: nothing was charged this time. */
  replayed: boolean;
  statuses: BudgetStatus[];
  /** Alerts this charge fired (empty on replay). */
  alerts: BudgetAlert[];
}

/** What `settle` returns. */
export interface BudgetSettlement {
  replayed: boolean;
  reserved: MicroCredits;
  settled: MicroCredits;
  /** The budgets the reservation charged, in the periods it was made in, after settling. */
  statuses: BudgetStatus[];
  alerts: BudgetAlert[];
}

/**
 * Budgets per user, team and project, independent of how credits are stored or paid for.
 */
export interface Budgets {
  /** Creates or replaces the budget of a scope for a period. */
  setBudget(input: BudgetInput): Promise<Budget>;
  removeBudget(scope: BudgetScope, period: BudgetPeriod): Promise<boolean>;
  listBudgets(scopes: BudgetScope[]): Promise<Budget[]>;
  /** The current period's spend of every budget of these scopes. */
  status(scopes: BudgetScope[]): Promise<BudgetStatus[]>;
  /**
   * Throws `BudgetExceededError` (402) when `estimate` does not fit in every budget of the
   * scopes. Advisory: two concurrent checks can both pass; use `commit` to charge atomically.
   */
  check(scopes: BudgetScope[], estimate: number): Promise<BudgetStatus[]>;
  /**
   * Adds what a finished run cost to every budget of the scopes, even past the limit (the
   * work is done). A repeated key charges nothing and returns `replayed: true`.
   */
  record(scopes: BudgetScope[], amount: number, idempotencyKey: string): Promise<BudgetChargeResult>;
  /**
   * Adds `amount` only if every budget of the scopes has room for it, atomically: concurrent
   * commits never take a budget past its limit. Throws `BudgetExceededError` and charges nothing otherwise.
   */
  commit(scopes: BudgetScope[], amount: number, idempotencyKey: string): Promise<BudgetChargeResult>;
  /**
   * Like `commit` (atomic, refused with 402 when it does not fit), but the amount is an
   * estimate to be corrected by `settle`. Concurrent reservations never overspend a budget.
   */
  reserve(scopes: BudgetScope[], estimate: number, idempotencyKey: string): Promise<BudgetChargeResult>;
  /**
   * Replaces a reservation's estimate with the actual cost, in the periods it was reserved in
   * (less is given back, more is added even past the limit: the work is done). Settling again
   * with the same amount is a replay; with another, a 409. `settle(key, 0)` releases it.
   */
  settle(idempotencyKey: string, actual: number): Promise<BudgetSettlement>;
  /** Releases reservations still open that were made before `before` (their runs died); returns how many. */
  releaseStaleReservations(before: Date): Promise<number>;
  /**
   * Forgets the idempotency records of charges made before `before` (open reservations are
   * kept), bounding the table; a key older than that would charge again. Returns how many.
   */
  forgetCharges(before: Date): Promise<number>;
  /**
   * Retries alerts whose delivery failed and that fired at least `olderThanMs` ago (default
   * 60 s, leaving fresh ones to the charge that is delivering them); returns how many were
   * delivered. Delivery is at least once: receivers drop repeats by the alert id.
   */
  deliverPendingAlerts(olderThanMs?: number): Promise<number>;
}
