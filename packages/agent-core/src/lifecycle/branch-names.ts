/** `0 → A`, `25 → Z`, `26 → AA`: the label of the k-th subtask. */
export function subtaskLabel(index: number): string {
  if (!Number.isInteger(index) || index < 0) throw new RangeError(`subtask index must be a non-negative integer, got ${index}`);
  let label = "";
  let n = index;
  do {
    label = String.fromCharCode(65 + (n % 26)) + label;
    n = Math.floor(n / 26) - 1;
  } while (n >= 0);
  return label;
}

export const SUMMON_PREFIX = "summon-";

/**
 * The branch of a parent's k-th child: the root's children are `summon-A`, `summon-B`, …
 * whatever the root's own branch is called; `summon-A`'s children are `summon-A-A`, `summon-A-B`.
 *
 * @example
 * childBranch("main", 0, true);      // "summon-A"
 * childBranch("summon-A", 1, false); // "summon-A-B"
 */
export function childBranch(parentBranch: string, index: number, parentIsRoot: boolean): string {
  const label = subtaskLabel(index);
  return parentIsRoot ? `${SUMMON_PREFIX}${label}` : `${parentBranch}-${label}`;
}

/** The agent id for a child: its branch label path (`A`, `A-B`), or `root`. */
export function agentIdForBranch(branch: string): string {
  return branch.startsWith(SUMMON_PREFIX) ? branch.slice(SUMMON_PREFIX.length) : "root";
}
