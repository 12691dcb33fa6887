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

/** The folder beside a run branch that holds its children's branches (git cannot nest refs under a branch). */
export const AGENTS_SUFFIX = "-agents/";

/**
 * The branch of a parent's k-th child. On a run branch (`keen/<id>`) the root's children are
 * `keen/<id>-agents/summon-A`, `…/summon-B`; a run in the checkout's own branch keeps the plain
 * `summon-A`. A child's children extend its name: `…summon-A-A`, `…summon-A-B`.
 *
 * @example
 * childBranch("keen/1a2b3c4d", 0, true, true);                 // "keen/1a2b3c4d-agents/summon-A"
 * childBranch("keen/1a2b3c4d-agents/summon-A", 1, false, true); // "keen/1a2b3c4d-agents/summon-A-B"
 * childBranch("main", 0, true, false);                          // "summon-A"
 */
export function childBranch(parentBranch: string, index: number, parentIsRoot: boolean, onRunBranch = false): string {
  const label = subtaskLabel(index);
  if (!parentIsRoot) return `${parentBranch}-${label}`;
  return onRunBranch ? `${parentBranch}${AGENTS_SUFFIX}${SUMMON_PREFIX}${label}` : `${SUMMON_PREFIX}${label}`;
}

/** The agent id for a child: its branch label path (`A`, `A-B`), or `root`. */
export function agentIdForBranch(branch: string): string {
  const seed = branch.slice(branch.lastIndexOf("/") + 1);
  return seed.startsWith(SUMMON_PREFIX) && (branch === seed || branch.includes(`${AGENTS_SUFFIX}${SUMMON_PREFIX}`)) ? seed.slice(SUMMON_PREFIX.length) : "root";
}
