/**
 * What sibling modules of gateway-kit may use of credits beyond its public index (the spend
 * service checks that a ledger lives on its own database). Never re-exported from the package's
 * entries.
 */
export { ledgerDatabaseOf } from "./kysely-ledger.js";
