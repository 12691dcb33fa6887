export { createStripeClient, StripeClientOptions, stripeLivemodeOf } from "./stripe-client.js";
export { billingMigrations, type BillingTables } from "./migrations.js";
export {
  CHECKOUT_METADATA,
  createCreditCheckout,
  CreditCheckoutOptions,
  CreditPack,
  type CreditCheckout,
  type StartCheckoutInput,
  type StartedCheckout,
} from "./checkout.js";
export { processStripeEvent, stripeWebhook, StripeWebhookOptions, type ProcessedEvent, type ProcessStripeEventOptions, type WebhookOutcome } from "./webhook.js";
export { createUsageMeter, MeterReportInput, type UsageMeter } from "./meter.js";
export { billingDataRights } from "./data-rights.js";
export type { BillingLedger, BillingLedgerFactory } from "./ledger.js";
