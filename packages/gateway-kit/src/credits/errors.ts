import { GatewayError } from "../errors.js";

/**
 * The wallet holds fewer credits than the operation needs. Nothing was written.
 * `available` is the wallet balance seen just after the refusal.
 *
 * @example
 * try { await ledger.reserve({ account, amount, idempotencyKey, ttlMs }); }
 * catch (e) { if (e instanceof InsufficientCreditsError) console.log(e.available); }
 */
export class InsufficientCreditsError extends GatewayError {
  readonly available: number;
  readonly requested: number;
  constructor(accountId: string, requested: number, available: number) {
    super("insufficient_credits", `Account ${accountId} has ${available} micro-credits available; ${requested} needed`, { details: {
      accountId,
      requested,
      available,
    } });
    this.name = "InsufficientCreditsError";
    this.available = available;
    this.requested = requested;
  }
}

/**
 * The wallet owes credits a refund or chargeback took back after they were spent; it cannot
 * spend (reserve, transfer out) until later credits have paid `debt`. Nothing was written.
 */
export class WalletInDebtError extends GatewayError {
  constructor(
    readonly accountId: string,
    readonly debt: number,
  ) {
    super("wallet_in_debt", `Account ${accountId} owes ${debt} micro-credits from a refund or chargeback; add credits to settle it first`, { details: {
      accountId,
      debt,
    } });
    this.name = "WalletInDebtError";
  }
}

/** No reservation has this id. */
export class ReservationNotFoundError extends GatewayError {
  constructor(readonly reservationId: string) {
    super("reservation_not_found", `Reservation ${reservationId} does not exist`, { details: { reservationId } });
    this.name = "ReservationNotFoundError";
  }
}

/** The reservation was already settled, released or expired by another operation. */
export class ReservationClosedError extends GatewayError {
  constructor(
    readonly reservationId: string,
    readonly reservationStatus: string,
  ) {
    super("reservation_closed", `Reservation ${reservationId} is already ${reservationStatus}`, { details: { reservationId, status: reservationStatus } });
    this.name = "ReservationClosedError";
  }
}

/** The idempotency key was used before with different parameters; the first write stands. */
export class IdempotencyConflictError extends GatewayError {
  constructor(readonly idempotencyKey: string) {
    super("idempotency_conflict", `Idempotency key "${idempotencyKey}" was already used with different parameters`, { details: {
      idempotencyKey,
    } });
    this.name = "IdempotencyConflictError";
  }
}

/** No ledger account has this id, or it is of a kind the operation cannot use. */
export class AccountNotFoundError extends GatewayError {
  constructor(
    readonly accountId: string,
    reason = "does not exist",
  ) {
    super("account_not_found", `Ledger account ${accountId} ${reason}`, { details: { accountId } });
    this.name = "AccountNotFoundError";
  }
}

/** A ledger call was given malformed input (a non-integer amount, an empty key, ...). */
export class LedgerInputError extends GatewayError {
  constructor(message: string, issues?: unknown) {
    super("invalid_request", message, { details: issues === undefined ? undefined : { issues } });
    this.name = "LedgerInputError";
  }
}

/** The price list has no entry for this model. */
export class UnknownModelError extends GatewayError {
  constructor(readonly model: string) {
    super("unknown_model", `No price is configured for model "${model}"`, { details: { model } });
    this.name = "UnknownModelError";
  }
}
