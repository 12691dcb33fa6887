// Erasure next to the real credits ledger: personal data goes, the ledger stays balanced and
// every wallet keeps its balance.
import { beforeAll, expect, it } from "vitest";
import { createAuditLog, verifyAuditChain } from "../audit/audit-log.js";
import { auditMigrations } from "../audit/migrations.js";
import { authMigrations } from "../auth/migrations.js";
import { creditMigrations, creditsDataRights, createKyselyLedger } from "../credits/index.js";
import { migrateToLatest } from "../db/migrations.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { auditDataRights } from "./audit-contributor.js";
import { authDataRights } from "./auth-contributor.js";
import { eraseUserData, exportUserData } from "./data-rights.js";

describeEachDatabase("erasure with the credits ledger", (fixture) => {
  beforeAll(async () => {
    await migrateToLatest(fixture.database.db, [authMigrations, auditMigrations, creditMigrations]);
  });

  it("keeps ledger totals and the audit chain while the person disappears", async () => {
    const { db } = fixture.database;
    const userId = "u_ledger";
    await db.insertInto("users").values({ id: userId, email: "grace@example.com", display_name: "Grace" }).execute();
    await db.insertInto("teams").values({ id: "t_ledger", name: "Grace's workspace", personal: true }).execute();
    await db.insertInto("memberships").values({ team_id: "t_ledger", user_id: userId, role: "owner" }).execute();
    await db.insertInto("auth_sessions").values({ id: "s_ledger", user_id: userId, expires_at: new Date(Date.now() + 86_400_000), ip: "203.0.113.77", user_agent: "Grace's phone" }).execute();
    const audit = createAuditLog(db);
    await audit.record({ tenantId: "t_ledger", actorId: userId, action: "credits.reserve", target: "run:r1", result: "success", ip: "203.0.113.77", details: { email: "grace@example.com" } });

    const ledger = createKyselyLedger(db);
    const wallet = await ledger.openWallet({ userId });
    await ledger.grant({ account: wallet.id, amount: 5_000_000, idempotencyKey: "welcome:u_ledger" });
    const hold = await ledger.reserve({ account: wallet.id, amount: 2_000_000, idempotencyKey: "run:r1", ttlMs: 3_600_000, reference: "r1" });
    await ledger.settle(hold.id, 1_234_567);
    const before = await exportUserData(db, userId, [creditsDataRights]);

    await eraseUserData(db, userId, [authDataRights(), auditDataRights(), creditsDataRights]);

    expect((await ledger.getAccount(wallet.id)).balance).toBe(5_000_000 - 1_234_567);
    expect(await ledger.verify()).toMatchObject({ ok: true, sumOfEntries: 0 });
    expect((await exportUserData(db, userId, [creditsDataRights])).sections.credits).toEqual(before.sections.credits);
    expect(await verifyAuditChain(db, "t_ledger")).toMatchObject({ ok: true, rows: 2, scrubs: { records: 1, rows: 1 } });
    const after = JSON.stringify(await exportUserData(db, userId, [authDataRights(), auditDataRights()]));
    for (const gone of ["grace@example.com", "203.0.113.77", "Grace"]) expect(after).not.toContain(gone);
  });
});
