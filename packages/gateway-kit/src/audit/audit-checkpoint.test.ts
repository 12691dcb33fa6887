import { generateKeyPairSync } from "node:crypto";
import { sql } from "kysely";
import { beforeAll, expect, it } from "vitest";
import { migrateToLatest } from "../db/index.js";
import { ConfigError } from "../errors.js";
import { describeEachDatabase } from "../testing/index.js";
import { auditCheckpoint, auditMigrations, auditRowHash, createAuditLog, listAuditEvents, verifyAuditChain, type AuditCheckpointKey, type AuditLog } from "./index.js";

const HMAC: AuditCheckpointKey = { id: "audit-2026", algorithm: "hmac-sha256", secret: "k".repeat(32) };
const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const SIGNER: AuditCheckpointKey = { id: "ed-1", algorithm: "ed25519", privateKey };
/** What a verifier holds: the public key only. */
const VERIFIER: AuditCheckpointKey = { id: "ed-1", algorithm: "ed25519", publicKey: publicKey.export({ type: "spki", format: "pem" }).toString() };

describeEachDatabase("audit checkpoints", (fixture) => {
  let audit: AuditLog;
  let clock = Date.parse("2026-03-01T00:00:00Z");
  beforeAll(async () => {
    await migrateToLatest(fixture.database.db, [auditMigrations]);
    audit = createAuditLog(fixture.database.db, { now: () => new Date((clock += 1000)), checkpointKey: HMAC });
  });

  const seed = async (tenantId: string, count: number) => {
    for (let i = 1; i <= count; i++) {
      await audit.record({ tenantId, actorId: `u_${i}`, action: "credits.settle", target: `run:${i}`, result: "success", ip: "198.51.100.7", details: { i } });
    }
  };

  /**
   * What an attacker holding the application's database credentials can do: switch the append-only
   * trigger off, change rows, and re-hash the chain and its head so it verifies on its own again.
   */
  const asDatabaseAttacker = async (tenant: string, work: () => Promise<void>) => {
    const { db } = fixture.database;
    await sql`alter table audit_log disable trigger audit_log_append_only`.execute(db);
    try {
      await work();
      // Re-chain every row from the first one and point the head at the new last row.
      let prev = "0".repeat(64);
      for (const row of await listAuditEvents(db, tenant, { limit: 10_000 })) {
        const hash = auditRowHash({ tenantKey: tenant, seq: row.seq, at: row.at, action: row.action, result: row.result, piiDigest: row.piiDigest, prevHash: prev });
        await sql`update audit_log set prev_hash = ${prev}, hash = ${hash} where tenant_key = ${tenant} and seq = ${row.seq}`.execute(db);
        prev = hash;
      }
      const last = await sql<{ seq: number }>`select coalesce(max(seq), 0)::int as seq from audit_log where tenant_key = ${tenant}`.execute(db);
      await sql`update audit_heads set seq = ${last.rows[0]!.seq}, hash = ${prev} where tenant_key = ${tenant}`.execute(db);
    } finally {
      await sql`alter table audit_log enable trigger audit_log_append_only`.execute(db);
    }
  };

  it("signs the chain head, and the chain keeps verifying against it as it grows and is scrubbed", async () => {
    await seed("team_grow", 4);
    const checkpoint = await audit.checkpoint("team_grow");
    const rows = await audit.list("team_grow");
    expect(checkpoint).toMatchObject({ v: 1, tenantId: "team_grow", seq: 4, hash: rows[3]!.hash, algorithm: "hmac-sha256", keyId: "audit-2026" });
    // It is plain JSON: a host stores it as text and reads it back.
    const stored = JSON.parse(JSON.stringify(checkpoint));
    await seed("team_grow", 3);
    await audit.scrub({ actorId: "u_2" });
    expect(await audit.verify("team_grow", stored)).toMatchObject({ ok: true, rows: 8, checkpoint: { seq: 4, keyId: "audit-2026" } });
    expect(await audit.checkpoint("team_nobody")).toMatchObject({ seq: 0, hash: "0".repeat(64) });
  });

  it("detects rows deleted from the end, head moved back, which the chain alone cannot show", async () => {
    await seed("team_cut", 6);
    const checkpoint = await audit.checkpoint("team_cut");
    await asDatabaseAttacker("team_cut", async () => {
      await sql`delete from audit_log where tenant_key = 'team_cut' and seq >= 5`.execute(fixture.database.db);
    });
    expect(await verifyAuditChain(fixture.database.db, "team_cut")).toMatchObject({ ok: true, rows: 4 });
    expect(await verifyAuditChain(fixture.database.db, "team_cut", { checkpoint, keys: HMAC })).toMatchObject({
      ok: false,
      seq: 5,
      problem: "checkpoint_truncated",
    });
  });

  it("detects a row rewritten behind the checkpoint with the whole chain re-hashed after it", async () => {
    await seed("team_rewrite", 6);
    const checkpoint = await auditCheckpoint(fixture.database.db, "team_rewrite", SIGNER);
    await asDatabaseAttacker("team_rewrite", async () => {
      await sql`update audit_log set result = 'failure' where tenant_key = 'team_rewrite' and seq = 2`.execute(fixture.database.db);
    });
    expect(await verifyAuditChain(fixture.database.db, "team_rewrite")).toMatchObject({ ok: true, rows: 6 });
    expect(await verifyAuditChain(fixture.database.db, "team_rewrite", { checkpoint, keys: [HMAC, VERIFIER] })).toMatchObject({
      ok: false,
      seq: 6,
      problem: "checkpoint_mismatch",
    });
    // Cutting the chain back and appending new rows up to the checkpoint's length is caught the same way.
    await seed("team_regrow", 3);
    const before = await audit.checkpoint("team_regrow");
    await asDatabaseAttacker("team_regrow", async () => {
      await sql`delete from audit_log where tenant_key = 'team_regrow' and seq = 3`.execute(fixture.database.db);
    });
    await seed("team_regrow", 1);
    expect(await audit.verify("team_regrow", before)).toMatchObject({ ok: false, seq: 3, problem: "checkpoint_mismatch" });
  });

  it("refuses a checkpoint whose signature, key or chain is wrong", async () => {
    await seed("team_sig", 3);
    const good = await auditCheckpoint(fixture.database.db, "team_sig", SIGNER);
    const verify = (checkpoint: unknown, keys: AuditCheckpointKey | AuditCheckpointKey[] = VERIFIER) =>
      verifyAuditChain(fixture.database.db, "team_sig", { checkpoint: checkpoint as never, keys });
    expect(await verify(good)).toMatchObject({ ok: true, checkpoint: { seq: 3, keyId: "ed-1" } });
    // A forged head (the attacker writes their own checkpoint to match a shorter chain).
    expect(await verify({ ...good, seq: 2 })).toMatchObject({ ok: false, problem: "checkpoint_invalid" });
    expect(await verify({ ...good, hash: "f".repeat(64) })).toMatchObject({ ok: false, problem: "checkpoint_invalid" });
    expect(await verify({ ...good, signature: good.signature.slice(0, -4) })).toMatchObject({ ok: false, problem: "checkpoint_invalid" });
    // Another key pair, an unknown key id, another tenant's chain, junk.
    const other = generateKeyPairSync("ed25519").publicKey;
    expect(await verify(good, { id: "ed-1", algorithm: "ed25519", publicKey: other })).toMatchObject({ ok: false, problem: "checkpoint_invalid" });
    expect(await verify(good, HMAC)).toMatchObject({ ok: false, problem: "checkpoint_invalid", message: expect.stringContaining("ed-1") });
    expect(await verify({ ...good, tenantId: "team_grow" })).toMatchObject({ ok: false, problem: "checkpoint_invalid" });
    expect(await verify(null)).toMatchObject({ ok: false, problem: "checkpoint_invalid" });
    const hmac = await auditCheckpoint(fixture.database.db, "team_sig", HMAC);
    expect(await verify(hmac, { ...HMAC, secret: "x".repeat(32) } as AuditCheckpointKey)).toMatchObject({ ok: false, problem: "checkpoint_invalid" });
    expect(await verify(hmac, HMAC)).toMatchObject({ ok: true });
  });

  it("throws ConfigError for keys that cannot sign or verify", async () => {
    const { db } = fixture.database;
    await expect(auditCheckpoint(db, "t", { id: "short", algorithm: "hmac-sha256", secret: "too short" })).rejects.toBeInstanceOf(ConfigError);
    await expect(auditCheckpoint(db, "t", VERIFIER)).rejects.toBeInstanceOf(ConfigError);
    await expect(auditCheckpoint(db, "t", { id: "bad id!", algorithm: "hmac-sha256", secret: "k".repeat(32) })).rejects.toBeInstanceOf(ConfigError);
    await expect(verifyAuditChain(db, "t", { checkpoint: await auditCheckpoint(db, "t", HMAC) })).rejects.toBeInstanceOf(ConfigError);
    await expect(createAuditLog(db).checkpoint("t")).rejects.toBeInstanceOf(ConfigError);
  });
});
