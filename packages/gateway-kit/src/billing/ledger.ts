import type { Kysely } from "kysely";
import type { Ledger } from "../credits/index.js";

/** What billing needs of the credits ledger: wallets, paid credits, and taking them back. */
export type BillingLedger = Pick<Ledger, "openWallet" | "purchase" | "reverse">;

/**
 * The credits ledger on a given database handle. Billing calls it with the transaction it records
 * a payment in, so the credits and the billing rows commit together or not at all. The kysely
 * ledger is one as it is: `ledger: createKyselyLedger`; a host with its own ledger passes a function
 * that returns it working in that transaction.
 *
 * @example
 * stripeWebhook({ stripe, db, signingSecret, ledger: (trx) => createKyselyLedger(trx, { maxAttempts: 5 }) });
 */
export type BillingLedgerFactory = (db: Kysely<any>) => BillingLedger;
