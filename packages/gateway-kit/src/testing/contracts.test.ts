import { beforeAll } from "vitest";
import { auditMigrations, createAuditLog, listAuditEvents } from "../audit/index.js";
import { createKyselyLedger, creditMigrations } from "../credits/index.js";
import { migrateToLatest } from "../db/index.js";
import { auditSinkContract, createMemoryMailer, describeEachDatabase, ledgerContract, mailerContract } from "./index.js";

// gateway-kit's own stores pass the contracts it exports to hosts, on PostgreSQL and PGlite.
// (The rate-limit store and run-slot contracts run in limits/, beside the memory stores.)
describeEachDatabase("kysely stores", (fixture) => {
  beforeAll(() => migrateToLatest(fixture.database.db, [creditMigrations, auditMigrations]));
  ledgerContract("kysely", () => createKyselyLedger(fixture.database.db));
  auditSinkContract("kysely audit log", () => ({
    sink: createAuditLog(fixture.database.db),
    read: (tenantId) => listAuditEvents(fixture.database.db, tenantId, { limit: 1000 }),
  }));
});

mailerContract("memory", () => {
  const mailer = createMemoryMailer();
  return { mailer, read: async (to) => mailer.to(to) };
});
