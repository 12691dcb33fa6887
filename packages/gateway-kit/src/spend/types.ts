import { GatewayError } from "../errors.js";
import type { BudgetAlert, BudgetScope, BudgetStatus } from "../budgets/index.js";
import type { WalletOwner } from "../credits/index.js";
import type { MicroCredits } from "../money.js";

/**
 * Where a spend's state is: `open` while the run may still spend it; then exactly one of
 * `settled` (charged what the run used), `released` (nothing charged) or `expired` (its time ran
 * out before anyone settled it; nothing charged).
 */
export type SpendStatus = "open" | "settled" | "released" | "expired";

/**
 * A spend's handle: the `handle` string `reserve` returned (store it with the run; a worker in
 * another process settles with it alone), or the hold object itself.
 */
export type SpendHandle = string | { readonly handle: string };

export interface SpendReserveInput {
  /** The wallet to hold credits in: a ledger wallet id, or its owner (the wallet is opened if new). */
  wallet: string | WalletOwner;
  /** Most the work may cost, in micro-credits (positive): held in the wallet and in every budget. */
  estimate: MicroCredits;
  /**
   * Makes the reservation safe to retry: a repeat with the same input returns the first hold
   * (`replayed: true`, whatever its status now); with other input, `idempotency_conflict`.
   */
  idempotencyKey: string;
  /** The budgets that apply (e.g. `budgetScopesOf(principal, projectId)`). Default none. */
  scopes?: BudgetScope[];
  /** How long the hold lasts before `sweepExpired` may release it. Default the service's `ttlMs`. */
  ttlMs?: number;
  /** An opaque id to find the spend by, e.g. the run id. No personal data. */
  reference?: string;
}

/** An open (or, on replay, possibly closed) spend: what `reserve` and `get` return. */
export interface SpendHold {
  /** The serialisable handle: `spend_<uuid>`. */
  handle: string;
  status: SpendStatus;
  /** The ledger wallet the credits are held in. */
  accountId: string;
  /** The ledger reservation behind the wallet hold. */
  reservationId: string;
  estimate: MicroCredits;
  scopes: BudgetScope[];
  reference: string | null;
  idempotencyKey: string;
  expiresAt: Date;
  createdAt: Date;
  /**
   * The applicable budgets after this hold was taken (empty when none applies, and on replay).
   * `remaining` is what the tightest of them still has.
   */
  budgets: BudgetStatus[];
  remaining: MicroCredits | undefined;
  /** True when `reserve`'s idempotency key had been used: this call took nothing, so it must not release. */
  replayed: boolean;
  /** Set once closed. */
  settlement: SpendSettlement | null;
}

/** How a spend was closed. The same value comes back from every later `settle` or `release` of it. */
export interface SpendSettlement {
  handle: string;
  status: Exclude<SpendStatus, "open">;
  estimate: MicroCredits;
  /** What `settle` was told the work used; 0 for a release or expiry. */
  actual: MicroCredits;
  /** Moved from the wallet to revenue, and added to every budget (which hold exactly this much of the spend). */
  charged: MicroCredits;
  /** Returned from the hold to the wallet. */
  released: MicroCredits;
  /** Usage that was not charged: above what the wallet could cover, or above the estimate under `overspend: "none"`. */
  shortfall: MicroCredits;
  closedAt: Date;
  /** True when this call did not close the spend (an earlier settle or release did). */
  replayed: boolean;
  /** The budgets the spend charged, after closing (empty on replay). */
  budgets: BudgetStatus[];
  /** Budget alerts this settlement fired. */
  alerts: BudgetAlert[];
}

export interface SpendSweepOptions {
  /** Most spends expired per call. Default 100. */
  limit?: number;
}

/**
 * One spend protocol for work whose cost is known only at the end (a run):
 * `reserve(estimate)` → `settle(actual)` | `release`, through one handle. The wallet hold and the
 * hold on every applicable budget are taken in one database transaction and closed in one: all
 * or nothing, exactly once.
 */
export interface Spend {
  /**
   * Holds `estimate` in the wallet and in every budget of `scopes`, in one transaction. Nothing is
   * held when any part does not fit: `insufficient_credits`, `wallet_in_debt`, or
   * `budget_exceeded` naming the budget (scope, period, limit, remaining).
   */
  reserve(input: SpendReserveInput): Promise<SpendHold>;
  /**
   * Charges what the work used, once: the hold pays for up to `estimate`; usage above it is
   * drawn from the wallet as far as the balance goes (`overspend: "wallet"`, default) or not at
   * all (`overspend: "none"`), and the rest is reported as `shortfall`, never charged. Budgets are
   * corrected to exactly what was charged (even past their limit: the work is done). A second
   * settle, with any amount, returns the first settlement (`replayed: true`); settling a released
   * spend is `spend_closed`, and so is settling one whose time ran out (it is expired instead).
   */
  settle(handle: SpendHandle, actual: MicroCredits): Promise<SpendSettlement>;
  /**
   * Returns the whole hold to the wallet and the budgets (cancelled before it started, or failed
   * without usage). Releasing again returns the first release; releasing a settled spend is
   * `spend_closed`.
   */
  release(handle: SpendHandle): Promise<SpendSettlement>;
  /** The spend's current state. */
  get(handle: SpendHandle): Promise<SpendHold>;
  /** Expires open spends whose time ran out: wallet and budget holds released together. */
  sweepExpired(options?: SpendSweepOptions): Promise<SpendSettlement[]>;
}

/** No spend has this handle. Renders as 404 `spend_not_found`. */
export class SpendNotFoundError extends GatewayError {
  constructor(readonly handle: string) {
    super("spend_not_found", `No spend with handle ${handle}`, { details: { handle } });
    this.name = "SpendNotFoundError";
  }
}

/** The spend was already closed another way (settle after release, release after settle, or expired). Renders as 409. */
export class SpendClosedError extends GatewayError {
  constructor(
    readonly handle: string,
    readonly spendStatus: SpendStatus,
  ) {
    super("spend_closed", `Spend ${handle} is already ${spendStatus}`, { details: { handle, status: spendStatus } });
    this.name = "SpendClosedError";
  }
}

/** A spend call got malformed input (a fractional estimate, an empty key, a handle that is not one). Renders as 400. */
export class SpendInputError extends GatewayError {
  constructor(message: string) {
    super("invalid_request", message);
    this.name = "SpendInputError";
  }
}
