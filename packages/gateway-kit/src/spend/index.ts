export * from "./types.js";
export { createSpend, type SpendOptions } from "./kysely-spend.js";
export { spendMigrations, type SpendTables } from "./migrations.js";
export { spendGuard, SpendReplayedError, type SpendGuardOptions } from "./spend-guard.js";
export { spendDataRights } from "./data-rights.js";
