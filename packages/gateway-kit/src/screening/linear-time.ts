// A linear-time check for the ReDoS suites, shared by the screening tests.
//
// A backtracking pattern is quadratic or worse: four times the text costs sixteen times the CPU
// or more, where a linear one costs four. A fixed CPU budget alone fails whenever the machine is
// busy, so the budget only picks out the inputs worth a closer look; one over it must then scale
// linearly between a quarter of the text and the whole, both sizes measured in alternation and
// the fastest of five rounds kept. CPU time rather than wall time: on a busy machine a linear
// scan waits for a core, but does not burn more of it.

export function cpuMs(run: () => void): number {
  const started = process.cpuUsage();
  run();
  const used = process.cpuUsage(started);
  return (used.user + used.system) / 1000;
}

/** Growth in CPU time from a quarter of the text to the whole at or past which a scan is superlinear. */
export const SUPERLINEAR_RATIO = 8;

/**
 * `undefined` when `scan` stays within `budgetMs` on `text` (best of three) or scales linearly
 * from a quarter of it; otherwise the growth in CPU time from the quarter to the whole.
 */
export function superlinearGrowth(text: string, scan: (text: string) => unknown, budgetMs: number): number | undefined {
  let whole = Infinity;
  for (let i = 0; i < 3 && whole >= budgetMs; i++) whole = Math.min(whole, cpuMs(() => scan(text)));
  if (whole < budgetMs) return undefined;
  const quarterText = text.slice(0, Math.floor(text.length / 4));
  let quarter = Infinity;
  for (let i = 0; i < 5; i++) {
    quarter = Math.min(quarter, cpuMs(() => scan(quarterText)));
    whole = Math.min(whole, cpuMs(() => scan(text)));
  }
  // Below a millisecond the clock's grain, not the scan, sets the quarter's figure.
  const growth = whole / Math.max(quarter, 1);
  return growth >= SUPERLINEAR_RATIO ? Math.round(growth * 10) / 10 : undefined;
}
