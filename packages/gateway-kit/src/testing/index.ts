export { describeEachDatabase, separatePools, TEST_DATABASE_URL, type DatabaseFixture } from "./each-database.js";
export { decodeStripeForm, startFakeStripe, type FakeStripe } from "../billing/internal.js";
export { TestClock } from "./clock.js";
export { auditSinkContract, type AuditSinkUnderTest } from "./audit-sink.contract.js";
export { ledgerContract } from "./ledger.contract.js";
export { rateLimitStoreContract } from "./rate-limit-store.contract.js";
export { runSlotStoreContract } from "./run-slot-store.contract.js";
export { mailerContract, type MailerUnderTest } from "./mailer.contract.js";
export { createMemoryMailer, type MemoryMailer } from "./memory-mailer.js";
