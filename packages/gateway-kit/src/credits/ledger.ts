/**
 * Amounts are `MicroCredits`: integer micro-credits carried as JavaScript numbers. Every amount is
 * checked to be a safe integer, and so is every balance: a write that would take any account
 * (wallet or system) past ±(2^53 − 1) is refused with `LedgerInputError`. The database stores
 * `bigint` and enforces the same bound, so every value read back is exact.
 */
import type { MicroCredits } from "../money.js";

/** Wallets belong to a user or a team; holds carry reserved credits; the rest are system accounts. */
export type AccountKind = "user_wallet" | "team_wallet" | "hold" | "revenue" | "grants" | "purchases";

/** System accounts may go negative (they are the other side of grants, purchases and charges). */
export const SYSTEM_ACCOUNT_KINDS: readonly AccountKind[] = ["revenue", "grants", "purchases"];

export interface LedgerAccount {
  id: string;
  kind: AccountKind;
  /** The user or team id of a wallet; null for holds and system accounts. */
  ownerId: string | null;
  /** For a hold: the wallet it belongs to. */
  walletId: string | null;
  balance: MicroCredits;
  /**
   * Credits a refund or chargeback took back that the wallet no longer held (they were spent).
   * While it is above zero the wallet is frozen for spending; credits that arrive pay it first.
   */
  debt: MicroCredits;
  createdAt: Date;
}

export type WalletOwner = { userId: string } | { teamId: string };

export type TransferKind = "grant" | "purchase" | "transfer";

export interface TransferInput {
  /** The wallet that receives the credits. */
  account: string;
  amount: MicroCredits;
  idempotencyKey: string;
}

export interface WalletTransferInput {
  from: string;
  to: string;
  amount: MicroCredits;
  idempotencyKey: string;
}

export interface TransferResult {
  transactionId: string;
  kind: TransferKind;
  from: string;
  to: string;
  amount: MicroCredits;
  idempotencyKey: string;
}

/** Why paid credits are taken back: the payment was refunded, or disputed by the card holder. */
export type ReversalReason = "refund" | "dispute";

export interface ReversalInput {
  /** The wallet the paid credits went to. */
  account: string;
  /** Micro-credits to take back. */
  amount: MicroCredits;
  idempotencyKey: string;
  reason: ReversalReason;
}

export interface ReversalResult {
  account: string;
  amount: MicroCredits;
  reason: ReversalReason;
  /** Taken back from the wallet's balance (to the `purchases` system account). */
  recovered: MicroCredits;
  /** The rest, which the wallet had already spent: added to its `debt`. */
  debt: MicroCredits;
  /** The reversal transaction; null when nothing could be recovered. */
  transactionId: string | null;
  idempotencyKey: string;
}

export interface ReserveInput {
  /** The wallet to draw from. */
  account: string;
  amount: MicroCredits;
  idempotencyKey: string;
  /** How long the hold lasts before `sweepExpiredReservations()` may release it. */
  ttlMs: number;
  /** An opaque id to find the reservation by, e.g. the run id. No personal data. */
  reference?: string;
}

export type ReservationStatus = "open" | "settled" | "released" | "expired";

export interface Reservation {
  id: string;
  accountId: string;
  holdAccountId: string;
  amount: MicroCredits;
  status: ReservationStatus;
  reference: string | null;
  expiresAt: Date;
  /** Set once closed. */
  charged: MicroCredits | null;
  released: MicroCredits | null;
  shortfall: MicroCredits | null;
  idempotencyKey: string;
  transactionId: string;
  /**
   * Set by `reserve` when its idempotency key had already been used: this call did not create the
   * hold, so it must not release it either (the request that created it owns it).
   */
  replayed?: boolean;
}

export interface Settlement {
  reservationId: string;
  accountId: string;
  status: Exclude<ReservationStatus, "open">;
  reserved: MicroCredits;
  /** Moved to revenue: from the hold, plus any overage drawn from the wallet. */
  charged: MicroCredits;
  /** Returned from the hold to the wallet. */
  released: MicroCredits;
  /** Usage above the reservation that the wallet could not cover; never charged. */
  shortfall: MicroCredits;
  transactionIds: string[];
  idempotencyKey: string;
}

export interface CloseOptions {
  /** Default `settle:<reservationId>` / `release:<reservationId>`. */
  idempotencyKey?: string;
}

export interface SweepOptions {
  /** Most reservations released per call. Default 500. */
  limit?: number;
}

export interface LedgerEntry {
  id: string;
  transactionId: string;
  transactionKind: string;
  accountId: string;
  amount: MicroCredits;
  reservationId: string | null;
  createdAt: Date;
}

export interface LedgerCheck {
  /** True when entries sum to zero, every transaction has two entries summing to zero and every balance equals its entries. */
  ok: boolean;
  sumOfEntries: MicroCredits;
  unbalancedTransactions: string[];
  accountsOutOfStep: { accountId: string; balance: MicroCredits; sumOfEntries: MicroCredits }[];
  negativeWallets: string[];
}

/**
 * The credits ledger. Every write takes an idempotency key: a repeat with the same parameters
 * returns the first result, a repeat with other parameters throws `IdempotencyConflictError`.
 * A refused write (insufficient credits, closed reservation) leaves nothing behind and does not
 * use up its key.
 */
export interface Ledger {
  /** Finds or opens the wallet (and its hold account) of a user or team. */
  openWallet(owner: WalletOwner): Promise<LedgerAccount>;
  getAccount(id: string): Promise<LedgerAccount>;
  /** Free credits from the `grants` system account. */
  grant(input: TransferInput): Promise<TransferResult>;
  /** Paid credits from the `purchases` system account. */
  purchase(input: TransferInput): Promise<TransferResult>;
  /**
   * Wallet to wallet, e.g. a user topping up a team. Both sides must be user or team wallets: a
   * system account is never a source or destination (`grant` and `purchase` are the only ways
   * credits are issued), so a caller-chosen `from` cannot mint credits.
   */
  transfer(input: WalletTransferInput): Promise<TransferResult>;
  /**
   * Takes paid credits back after a refund or chargeback, as a balanced entry from the wallet
   * to the `purchases` system account. What the wallet no longer holds is recorded as `debt`
   * (the balance never goes negative); a wallet in debt cannot reserve or transfer out
   * (`WalletInDebtError`), and later grants, purchases and incoming transfers pay the debt first.
   */
  reverse(input: ReversalInput): Promise<ReversalResult>;
  /**
   * Moves `amount` from the wallet to its hold. Throws `InsufficientCreditsError` when it cannot,
   * `WalletInDebtError` when the wallet owes reversed credits.
   */
  reserve(input: ReserveInput): Promise<Reservation>;
  /**
   * Charges `actual` to revenue and returns the rest of the hold to the wallet. Usage above the
   * reservation is drawn from the wallet as far as its balance allows; the remainder is reported
   * as `shortfall` and not charged. A reservation whose `expiresAt` has passed cannot be settled,
   * even before the sweeper has released it (`ReservationClosedError` with status `expired`).
   */
  settle(reservationId: string, actual: MicroCredits, options?: CloseOptions): Promise<Settlement>;
  /** Returns the whole hold to the wallet (cancelled or crashed run). */
  release(reservationId: string, options?: CloseOptions): Promise<Settlement>;
  getReservation(id: string): Promise<Reservation>;
  /** Releases open reservations whose `expiresAt` has passed, marking them `expired`. */
  sweepExpiredReservations(options?: SweepOptions): Promise<Settlement[]>;
  /** Entries of one account, newest first. */
  listEntries(accountId: string, options?: { limit?: number; beforeId?: string }): Promise<LedgerEntry[]>;
  /** Audits the whole ledger: sums, per-transaction balance, balances against entries. */
  verify(): Promise<LedgerCheck>;
}
