import { IdempotencyConflictError, ReservationClosedError, SpendClosedError, type BudgetScope, type Ledger, type Spend } from "@keen/gateway-kit";

/** How long a run's hold lasts if no worker ever closes it. */
export const RUN_HOLD_TTL_MS = 7 * 24 * 3600_000;

/** The budgets a run counts against: its user's and its team's. */
export function runBudgetScopes(userId: string, teamId: string): BudgetScope[] {
  return [
    { kind: "user", id: userId },
    { kind: "team", id: teamId },
  ];
}

/**
 * Runs created before spends kept a bare ledger reservation id in `runs.reservation_id`; newer
 * ones keep a spend handle there. Both close the same way from here.
 */
const isSpendHandle = (id: string) => id.startsWith("spend_");

/**
 * Closes a run's hold once and returns what it charged. With a price, settles it (the first
 * settlement stands when an earlier attempt got there); without one (the run failed before it
 * could report usage), releases it. A hold closed some other way charged what it recorded.
 */
export async function closeRunHold(spend: Spend, ledger: Ledger, handle: string | null, price: number | null): Promise<number> {
  if (!handle) return 0;
  if (!isSpendHandle(handle)) {
    try {
      return price === null ? (await ledger.release(handle), 0) : (await ledger.settle(handle, price)).charged;
    } catch (error) {
      if (error instanceof IdempotencyConflictError || error instanceof ReservationClosedError) return (await ledger.getReservation(handle)).charged ?? 0;
      throw error;
    }
  }
  try {
    return price === null ? (await spend.release(handle)).charged : (await spend.settle(handle, price)).charged;
  } catch (error) {
    if (error instanceof SpendClosedError) return (await spend.get(handle)).settlement?.charged ?? 0;
    throw error;
  }
}

/** Gives a run's hold back without charging (a queued run cancelled, a create or resume undone). */
export async function releaseRunHold(spend: Spend, ledger: Ledger, handle: string | null): Promise<void> {
  await closeRunHold(spend, ledger, handle, null);
}
