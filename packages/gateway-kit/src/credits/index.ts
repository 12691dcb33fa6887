export { MicroCredits } from "../money.js";
export * from "./errors.js";
export * from "./ledger.js";
export { createKyselyLedger, type KyselyLedgerOptions } from "./kysely-ledger.js";
export { creditMigrations, SYSTEM_ACCOUNTS } from "./migrations.js";
export type { CreditTables } from "./tables.js";
export { createPriceList, DEFAULT_MODEL_PRICES, priceUsage, PriceListOptions, type ModelPrice, type PriceList, type TokenUsage } from "./pricing.js";
export { creditsDataRights } from "./data-rights.js";
