export * from "./types.js";
export { budgetMigrations } from "./migrations.js";
export type { BudgetTables } from "./tables.js";
export { periodWindow, type PeriodWindow } from "./periods.js";
export { createKyselyBudgets, type BudgetsOptions, type KyselyBudgets } from "./kysely-budgets.js";
export {
  budgetAlertPayload,
  emailNotifier,
  combineNotifiers,
  signBudgetWebhook,
  verifyBudgetWebhook,
  webhookNotifier,
  BudgetWebhookError,
  BUDGET_WEBHOOK_SIGNATURE_HEADER,
  type EmailMessage,
  type EmailNotifierOptions,
  type EmailSender,
  type WebhookNotifierOptions,
} from "./notifiers.js";
export { budgetGuard, budgetScopesOf, type BudgetGuardOptions, type BudgetState } from "./budget-guard.js";
export {
  ContextTier,
  CostRouteRequest,
  CostRouteError,
  createCostRouter,
  defaultCostPolicy,
  DEFAULT_CONTEXT_TIERS,
  routeByCost,
  tokenCost,
  type CostPolicy,
  type CostRouteErrorCode,
  type CostRoute,
  type CostRouterOptions,
} from "./route-by-cost.js";
export { budgetsDataRights } from "./data-rights.js";
