import type { BudgetPeriod } from "./types.js";

/** The window of one budget period: a key that names it, and its bounds (UTC). */
export interface PeriodWindow {
  key: string;
  start: Date | null;
  /** When the next period starts; `null` for `total`, which never resets. */
  end: Date | null;
}

/**
 * The UTC period containing `at`: days run midnight to midnight, months from the 1st.
 *
 * @example
 * periodWindow("monthly", new Date("2026-11-25T18:00:00Z")); // { key: "2026-11", start: 2026-11-01, end: 2026-12-01 }
 */
export function periodWindow(period: BudgetPeriod, at: Date): PeriodWindow {
  const y = at.getUTCFullYear();
  const m = at.getUTCMonth();
  const d = at.getUTCDate();
  const pad = (n: number) => String(n).padStart(2, "0");
  switch (period) {
    case "daily":
      return { key: `${y}-${pad(m + 1)}-${pad(d)}`, start: new Date(Date.UTC(y, m, d)), end: new Date(Date.UTC(y, m, d + 1)) };
    case "monthly":
      return { key: `${y}-${pad(m + 1)}`, start: new Date(Date.UTC(y, m, 1)), end: new Date(Date.UTC(y, m + 1, 1)) };
    case "total":
      return { key: "total", start: null, end: null };
  }
}
