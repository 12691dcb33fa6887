import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Router } from "@koa/router";
import Koa from "koa";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDatabase } from "../db/database.js";
import { migrateToLatest } from "../db/migrations.js";
import { errorHandler, HttpError } from "../http-error.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { AuditEventError, createAuditLog, listAuditEvents, scrubAuditPii, verifyAuditChain, type AuditLog } from "./audit-log.js";
import { auditRequests } from "./audit-requests.js";
import { canonicalJson } from "./canonical-json.js";
import { auditMigrations } from "./migrations.js";

describe("canonicalJson", () => {
  it("sorts keys by code unit, drops undefined properties and writes no whitespace", () => {
    expect(canonicalJson({ b: 1, a: [true, null, "x"], "é": 0, B: undefined, c: { z: 1, y: -0 } })).toBe('{"a":[true,null,"x"],"b":1,"c":{"y":0,"z":1},"é":0}');
    expect(canonicalJson({ "\u20ac": 1, "\r": 2, "1": 3, "": 4 })).toBe('{"":4,"\\r":2,"1":3,"€":1}');
  });

  it("writes numbers and strings the RFC 8785 way", () => {
    expect(canonicalJson([1e21, 1e-7, 0.1 + 0.2, 333333333.3333333, -0])).toBe("[1e+21,1e-7,0.30000000000000004,333333333.3333333,0]");
    expect(canonicalJson("a\u0001\n\"\\\ud800")).toBe('"a\\u0001\\n\\"\\\\\\ud800"');
    expect(canonicalJson({ at: new Date(0) })).toBe('{"at":"1970-01-01T00:00:00.000Z"}');
  });

  it("refuses what JSON cannot hold", () => {
    expect(() => canonicalJson({ n: NaN })).toThrow(/finite/);
    expect(() => canonicalJson({ n: 1n })).toThrow(/bigint/);
    expect(() => canonicalJson([undefined])).toThrow(/undefined/);
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    expect(() => canonicalJson(cycle)).toThrow(/cycle/);
  });
});

describeEachDatabase("audit log", (fixture) => {
  let audit: AuditLog;
  let clock = Date.parse("2026-01-01T00:00:00Z");
  beforeAll(async () => {
    await migrateToLatest(fixture.database.db, [auditMigrations]);
    audit = createAuditLog(fixture.database.db, { now: () => new Date((clock += 1000)) });
  });

  const seed = async (tenantId: string, count: number, actor = "u") => {
    for (let i = 1; i <= count; i++) {
      await audit.record({ tenantId, actorId: `${actor}_${i % 3}`, action: "api_key.create", target: `api_key:${i}`, result: "success", ip: `198.51.100.${i}`, requestId: `r${i}`, details: { i, scopes: ["sessions:read"] } });
    }
  };
  /** Runs raw SQL with the append-only trigger switched off, the way an attacker with table rights would. */
  const tamper = async (statement: ReturnType<typeof sql>) => {
    const { db } = fixture.database;
    await sql`alter table audit_log disable trigger audit_log_append_only`.execute(db);
    try {
      await statement.execute(db);
    } finally {
      await sql`alter table audit_log enable trigger audit_log_append_only`.execute(db);
    }
  };

  it("chains a tenant's events with sequence numbers and verifies them", async () => {
    await seed("team_a", 5);
    await audit.record({ tenantId: null, actorId: null, action: "auth.login", result: "failure", ip: "203.0.113.9" });
    const rows = await audit.list("team_a");
    expect(rows.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(rows[1]!.prevHash).toBe(rows[0]!.hash);
    expect(rows[4]).toMatchObject({ tenantId: "team_a", action: "api_key.create", actorId: "u_2", ip: "198.51.100.5", details: { i: 5, scopes: ["sessions:read"] }, scrubbedAt: null });
    expect(await audit.verify("team_a")).toEqual({ ok: true, tenantId: "team_a", rows: 5, headHash: rows[4]!.hash, scrubs: { records: 0, rows: 0 } });
    expect(await audit.verify(null)).toMatchObject({ ok: true, rows: 1 });
    expect(await audit.verify("team_nobody")).toMatchObject({ ok: true, rows: 0 });
  });

  it("refuses UPDATE, DELETE and TRUNCATE in the database", async () => {
    const { db } = fixture.database;
    await expect(db.updateTable("audit_log").set({ ip: "0.0.0.0" }).where("tenant_key", "=", "team_a").execute()).rejects.toThrow(/append-only: UPDATE refused/);
    await expect(db.deleteFrom("audit_log").where("tenant_key", "=", "team_a").execute()).rejects.toThrow(/append-only: DELETE refused/);
    await expect(sql`truncate audit_log`.execute(db)).rejects.toThrow(/append-only: TRUNCATE refused/);
    // Even the scrub switch only lets the personal columns be nulled, never an action rewritten.
    await expect(
      db.transaction().execute(async (trx) => {
        await sql`select set_config('keen.audit_scrub', 'on', true)`.execute(trx);
        await trx.updateTable("audit_log").set({ action: "nothing.happened", scrubbed_at: new Date() }).where("tenant_key", "=", "team_a").execute();
      }),
    ).rejects.toThrow(/append-only/);
    expect(await audit.verify("team_a")).toMatchObject({ ok: true, rows: 5 });
  });

  it("pinpoints an edited personal field", async () => {
    await seed("team_ip", 8);
    await tamper(sql`update audit_log set ip = '10.0.0.1' where tenant_key = 'team_ip' and seq = 5`);
    expect(await verifyAuditChain(fixture.database.db, "team_ip")).toMatchObject({ ok: false, seq: 5, problem: "payload_mismatch", rows: 4 });
  });

  it("pinpoints an edited action, result or time", async () => {
    await seed("team_act", 8);
    await tamper(sql`update audit_log set result = 'failure' where tenant_key = 'team_act' and seq = 7`);
    expect(await verifyAuditChain(fixture.database.db, "team_act")).toMatchObject({ ok: false, seq: 7, problem: "hash_mismatch" });
    await seed("team_at", 4);
    await tamper(sql`update audit_log set at = at - interval '1 day' where tenant_key = 'team_at' and seq = 2`);
    expect(await verifyAuditChain(fixture.database.db, "team_at")).toMatchObject({ ok: false, seq: 2, problem: "hash_mismatch" });
  });

  it("pinpoints a recomputed row by its broken link to the next one", async () => {
    // The attacker edits row 3 and rewrites its own hash consistently; row 4 still points at the old one.
    await seed("team_rehash", 6);
    const { db } = fixture.database;
    const row = (await listAuditEvents(db, "team_rehash")).find((r) => r.seq === 3)!;
    const { auditPiiDigest, auditRowHash } = await import("./audit-log.js");
    const salt = "00".repeat(16);
    const digest = auditPiiDigest(salt, { actorId: "someone_else", target: row.target, ip: row.ip, requestId: row.requestId, details: row.details });
    const hash = auditRowHash({ tenantKey: "team_rehash", seq: 3, at: row.at, action: row.action, result: row.result, piiDigest: digest, prevHash: row.prevHash });
    await tamper(sql`update audit_log set actor_id = 'someone_else', pii_salt = ${salt}, pii_digest = ${digest}, hash = ${hash} where tenant_key = 'team_rehash' and seq = 3`);
    expect(await verifyAuditChain(db, "team_rehash")).toMatchObject({ ok: false, seq: 4, problem: "broken_link" });
  });

  it("pinpoints deleted rows, in the middle and at the end", async () => {
    await seed("team_gap", 6);
    await tamper(sql`delete from audit_log where tenant_key = 'team_gap' and seq = 3`);
    expect(await verifyAuditChain(fixture.database.db, "team_gap")).toMatchObject({ ok: false, seq: 3, problem: "sequence_gap" });
    await seed("team_tail", 6);
    await tamper(sql`delete from audit_log where tenant_key = 'team_tail' and seq >= 5`);
    expect(await verifyAuditChain(fixture.database.db, "team_tail")).toMatchObject({ ok: false, seq: 5, problem: "head_mismatch" });
  });

  it("does not fork a chain under 100 concurrent appends", async () => {
    await Promise.all(Array.from({ length: 100 }, (_, i) => audit.record({ tenantId: "team_busy", actorId: `u${i}`, action: "credits.reserve", result: "success", details: { i } })));
    const rows = await listAuditEvents(fixture.database.db, "team_busy", { limit: 1000 });
    expect(rows.map((r) => r.seq)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(new Set(rows.map((r) => r.prevHash)).size).toBe(100);
    expect(await audit.verify("team_busy")).toMatchObject({ ok: true, rows: 100 });
  });

  it("does not fork across two connection pools (two server processes) while a scrub runs", async () => {
    const other = fixture.kind === "postgres" ? await openDatabase({ url: fixture.url!, schema: fixture.schema!, maxConnections: 5 }) : undefined;
    try {
      const second = createAuditLog((other ?? fixture.database).db);
      const { db } = fixture.database;
      await Promise.all([
        ...Array.from({ length: 40 }, (_, i) => (i % 2 ? audit : second).record({ tenantId: "team_pools", actorId: i % 4 === 0 ? "leaver" : `u${i}`, action: "api.call", result: "success", ip: "198.51.100.1" })),
        db.transaction().execute((trx) => scrubAuditPii(trx, { actorId: "leaver" })),
      ]);
      await db.transaction().execute((trx) => scrubAuditPii(trx, { actorId: "leaver" }));
      const rows = await listAuditEvents(db, "team_pools", { limit: 1000 });
      expect(rows.map((r) => r.seq)).toEqual(Array.from({ length: rows.length }, (_, i) => i + 1));
      expect(rows.filter((r) => r.action === "api.call")).toHaveLength(40);
      expect(rows.filter((r) => r.scrubbedAt !== null)).toHaveLength(10);
      expect(await verifyAuditChain(db, "team_pools")).toMatchObject({ ok: true, rows: rows.length, scrubs: { rows: 10 } });
    } finally {
      await other?.close();
    }
  });

  it("scrubs personal fields and the chain still verifies", async () => {
    await seed("team_gdpr", 6, "gdpr");
    const { db } = fixture.database;
    const scrubbed = await db.transaction().execute((trx) => scrubAuditPii(trx, { actorId: "gdpr_1" }));
    expect(scrubbed).toBe(2);
    const rows = await listAuditEvents(db, "team_gdpr");
    const gone = rows.filter((r) => r.scrubbedAt !== null);
    expect(gone.map((r) => r.seq)).toEqual([1, 4]);
    expect(gone[0]).toMatchObject({ actorId: null, ip: null, target: null, requestId: null, details: null, action: "api_key.create", result: "success" });
    // The scrub is itself on the chain, naming the rows it blanked and nothing personal.
    expect(rows[6]).toMatchObject({ seq: 7, action: "audit.scrub", actorId: null, ip: null, details: { seqs: [[1, 1], [4, 4]], count: 2 } });
    expect(await audit.verify("team_gdpr")).toMatchObject({ ok: true, rows: 7, scrubs: { records: 1, rows: 2 } });
    // Scrub records are never scrubbed themselves.
    expect(await db.transaction().execute((trx) => scrubAuditPii(trx, { before: new Date(Date.now() + 86_400_000) }))).toBeGreaterThan(0);
    expect((await listAuditEvents(db, "team_gdpr"))[6]!.details).toEqual({ seqs: [[1, 1], [4, 4]], count: 2 });
    expect(await audit.verify("team_gdpr")).toMatchObject({ ok: true, scrubs: { records: 2, rows: 6 } });
    // A scrubbed row's action is still protected by the chain.
    await tamper(sql`update audit_log set action = 'auth.logout' where tenant_key = 'team_gdpr' and seq = 4`);
    expect(await audit.verify("team_gdpr")).toMatchObject({ ok: false, seq: 4, problem: "hash_mismatch" });
    await expect(scrubAuditPii(db, { actorId: "u_1" })).rejects.toThrow(/inside a transaction/);
  });

  it("shows a scrub done behind its back: rows blanked by setting keen.audit_scrub directly fail verification", async () => {
    await seed("team_sneak", 4, "sneak");
    const { db } = fixture.database;
    // The attack: the table owner's credentials, the scrub switch, a plain UPDATE, no record.
    await db.transaction().execute(async (trx) => {
      await sql`select set_config('keen.audit_scrub', 'on', true)`.execute(trx);
      await sql`update audit_log set actor_id = null, target = null, ip = null, request_id = null, details = null, pii_salt = null, scrubbed_at = now()
        where tenant_key = 'team_sneak' and seq = 2`.execute(trx);
    });
    expect(await audit.verify("team_sneak")).toMatchObject({ ok: false, seq: 2, problem: "unrecorded_scrub" });
  });

  if (fixture.kind === "postgres") {
    it("lets an application role that does not own the tables scrub only through gk_audit_scrub", async () => {
      await seed("team_role", 3, "role");
      const { db } = fixture.database;
      const role = `keen_app_${Math.random().toString(36).slice(2, 10)}`;
      const schema = sql.id(fixture.schema!);
      await sql`create role ${sql.id(role)}`.execute(db);
      try {
        await sql`grant usage on schema ${schema} to ${sql.id(role)}`.execute(db);
        await sql`grant select, insert, update on audit_log, audit_heads to ${sql.id(role)}`.execute(db);
        await sql`grant execute on function gk_audit_scrub(text, text[], timestamptz, timestamptz, text[]) to ${sql.id(role)}`.execute(db);
        // With UPDATE granted and the switch on, a direct blanking is still refused.
        await expect(
          db.transaction().execute(async (trx) => {
            await sql`set local role ${sql.id(role)}`.execute(trx);
            await sql`select set_config('keen.audit_scrub', 'on', true)`.execute(trx);
            await sql`update audit_log set actor_id = null, target = null, ip = null, request_id = null, details = null, pii_salt = null, scrubbed_at = now()
              where tenant_key = 'team_role'`.execute(trx);
          }),
        ).rejects.toThrow(/append-only/);
        // Through the function (and so with a record on the chain) it works.
        const scrubbed = await db.transaction().execute(async (trx) => {
          await sql`set local role ${sql.id(role)}`.execute(trx);
          return scrubAuditPii(trx, { actorId: "role_1" });
        });
        expect(scrubbed).toBe(1);
        expect(await audit.verify("team_role")).toMatchObject({ ok: true, rows: 4, scrubs: { records: 1, rows: 1 } });
      } finally {
        await sql`drop owned by ${sql.id(role)}`.execute(db);
        await sql`drop role ${sql.id(role)}`.execute(db);
      }
    });
  }

  it("masks secrets in details and target before storing them", async () => {
    const token = `ghp_${"A1b2C3d4".repeat(5)}`;
    await audit.record({ tenantId: "team_secret", actorId: "u", action: "webhook.call", target: `https://bot:${token}@hooks.example/x`, result: "failure", details: { error: `bad credentials ${token}`, headers: { Authorization: "Bearer abcdefghijklmnopqrstuvwxyz" } } });
    const [row] = await audit.list("team_secret");
    expect(row).toMatchObject({
      target: "https://bot:[REDACTED:url_password]@hooks.example/x",
      details: { error: "bad credentials [REDACTED:github_token]", headers: { Authorization: "[REDACTED:sensitive_field]" } },
    });
    expect(await audit.verify("team_secret")).toMatchObject({ ok: true, rows: 1 });
  });

  it("rejects malformed events with a typed error and stores nothing", async () => {
    await expect(audit.record({ tenantId: "team_bad", actorId: null, action: "x", result: "maybe" as never })).rejects.toBeInstanceOf(AuditEventError);
    await expect(audit.record({ tenantId: "team_bad", actorId: null, action: "x", result: "success", details: { n: 1n } })).rejects.toThrow(/details cannot be stored/);
    await expect(audit.record({ tenantId: "", actorId: null, action: "x", result: "success" })).rejects.toThrow(/tenantId/);
    expect(await listAuditEvents(fixture.database.db, "team_bad")).toEqual([]);
  });

  describe("auditRequests()", () => {
    let url = "";
    let close: () => Promise<void>;
    beforeAll(async () => {
      const app = new Koa();
      app.proxy = true;
      const router = new Router();
      app.use(errorHandler());
      app.use(async (ctx, next) => {
        ctx.state.requestId = ctx.get("x-request-id") || undefined;
        if (ctx.get("x-user")) ctx.state.principal = { userId: ctx.get("x-user"), teamId: "team_http", via: "api_key", scopes: [], apiKeyId: "key_1" };
        await next();
      });
      app.use(auditRequests(audit, { skip: (ctx) => ctx.path === "/health" }));
      router.post("/projects/:id/runs", (ctx) => {
        ctx.status = 201;
        ctx.body = { ok: true };
      });
      router.get("/admin", () => {
        throw new HttpError(403, "forbidden", "no");
      });
      router.get("/health", (ctx) => void (ctx.body = "ok"));
      router.get("/upstream", () => {
        throw Object.assign(new Error("upstream down"), { status: 503 });
      });
      app.use(router.routes());
      const server = createServer(app.callback());
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      close = () => new Promise((resolve) => server.close(() => resolve()));
    });
    afterAll(() => close());

    it("records who, what, target, result, ip and request id for every call", async () => {
      const headers = { "x-user": "u_http", "x-forwarded-for": "192.0.2.44", "x-request-id": "req-1" };
      expect((await fetch(`${url}/projects/p1/runs?token=secret`, { method: "POST", headers })).status).toBe(201);
      expect((await fetch(`${url}/admin`, { headers: { ...headers, "x-request-id": "req-2" } })).status).toBe(403);
      expect((await fetch(`${url}/health`, { headers })).status).toBe(200);
      expect((await fetch(`${url}/nowhere`, { headers: { "x-forwarded-for": "192.0.2.45" } })).status).toBe(404);
      const rows = await audit.list("team_http");
      expect(rows.map((r) => [r.action, r.target, r.result, r.ip, r.requestId, r.actorId])).toEqual([
        ["POST /projects/:id/runs", "/projects/p1/runs", "success", "192.0.2.44", "req-1", "u_http"],
        ["GET /admin", "/admin", "denied", "192.0.2.44", "req-2", "u_http"],
      ]);
      expect(rows[0]!.details).toMatchObject({ status: 201, apiKeyId: "key_1" });
      const anonymous = (await audit.list(null, { limit: 1000 })).at(-1)!;
      expect(anonymous).toMatchObject({ action: "GET (unmatched)", target: "/nowhere", result: "failure", ip: "192.0.2.45", actorId: null, details: { status: 404 } });
      expect(await audit.verify("team_http")).toMatchObject({ ok: true, rows: 2 });
    });

    it("records the status the client got, also for a foreign error carrying its own 5xx", async () => {
      const response = await fetch(`${url}/upstream`, { headers: { "x-forwarded-for": "192.0.2.46" } });
      expect(response.status).toBe(500);
      const row = (await audit.list(null, { limit: 1000 })).at(-1)!;
      expect(row).toMatchObject({ action: "GET /upstream", result: "failure", ip: "192.0.2.46", details: { status: 500 } });
    });
  });
});
