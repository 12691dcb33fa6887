/**
 * What sibling modules of gateway-kit may use of budgets beyond its public index (the spend
 * service reaches the engine under a `Budgets` to hold budgets in its own transaction). Never
 * re-exported from the package's entries.
 */
export { budgetEngineOf, type BudgetEngine } from "./kysely-budgets.js";
