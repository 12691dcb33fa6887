import { ModelError } from "../errors.js";
import { BudgetSpent } from "./budget.js";
import type { AgentTree } from "./tree.js";

/**
 * True when `caught` interrupts the run rather than failing one step of it: the model stayed
 * unavailable after its retries (the run ends `interrupted`, resumable), or the run was already
 * interrupted.
 */
export function isInterruption(tree: AgentTree, caught: unknown): boolean {
  if (tree.interruption) return true;
  return caught instanceof ModelError && caught.retryable && !tree.signal.aborted;
}

/**
 * True when `caught` stops the whole run, so no step may take it as its own failure and go on:
 * an abort, a spent budget, or an interruption.
 */
export function stopsTheRun(tree: AgentTree, caught: unknown): boolean {
  return tree.signal.aborted || caught instanceof BudgetSpent || isInterruption(tree, caught);
}
