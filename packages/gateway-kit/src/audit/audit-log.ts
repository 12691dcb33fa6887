import { ConfigError, GatewayError } from "../errors.js";
import { createHash, createHmac, createPrivateKey, createPublicKey, randomBytes, sign as signBytes, timingSafeEqual, verify as verifySignature, type KeyObject } from "node:crypto";
import { sql, type Kysely } from "kysely";
import type { AuditEventInput, AuditSink } from "./audit-sink.js";
import { redactSecrets, redactSecretsDeep } from "../redact-secrets.js";
import { canonicalJson } from "./canonical-json.js";

/** The hash a chain starts from (the `prev_hash` of sequence 1). */
export const AUDIT_GENESIS_HASH = "0".repeat(64);

/** The chain a tenant's events go to: the tenant id, or `""` for system events (`tenantId: null`). */
const tenantKey = (tenantId: string | null) => tenantId ?? "";

const ACTION = /^[^\u0000-\u001f\u007f]{1,200}$/;
const RESULTS = new Set(["success", "failure", "denied"]);

/** An audit event as stored, with its place in the chain. Personal fields are null once scrubbed. */
export interface AuditRecord {
  tenantId: string | null;
  seq: number;
  at: Date;
  action: string;
  result: AuditEventInput["result"];
  actorId: string | null;
  target: string | null;
  ip: string | null;
  requestId: string | null;
  details: Record<string, unknown> | null;
  piiDigest: string;
  prevHash: string;
  hash: string;
  /** When erasure or retention removed the personal fields; null while they are intact. */
  scrubbedAt: Date | null;
}

/** A bad audit event (unknown result, malformed action, details JSON cannot hold). */
export class AuditEventError extends GatewayError {
  constructor(message: string) {
    super("invalid_audit_event", message);
    this.name = "AuditEventError";
  }
}

const sha256 = (text: string) => createHash("sha256").update(text, "utf8").digest("hex");

/**
 * The commitment to an event's personal fields: SHA-256 over a per-row random salt, a newline and
 * the canonical JSON of `{ actor, details, ip, requestId, target }`. The salt is erased with the
 * fields, after which the digest reveals nothing guessable (not even a 32-bit IPv4 address).
 */
export function auditPiiDigest(salt: string, pii: { actorId: string | null; target: string | null; ip: string | null; requestId: string | null; details: unknown }): string {
  return sha256(`${salt}\n${canonicalJson({ actor: pii.actorId, details: pii.details ?? null, ip: pii.ip, requestId: pii.requestId, target: pii.target })}`);
}

/**
 * A row's chain hash: SHA-256 of the canonical JSON of
 * `{ v: 1, tenant, seq, at (ISO 8601, ms), action, result, pii: piiDigest, prev: prevHash }`.
 * Personal fields enter only through `piiDigest`, so scrubbing them leaves every hash valid.
 */
export function auditRowHash(row: { tenantKey: string; seq: number; at: Date; action: string; result: string; piiDigest: string; prevHash: string }): string {
  return sha256(
    canonicalJson({ v: 1, tenant: row.tenantKey, seq: row.seq, at: row.at.toISOString(), action: row.action, result: row.result, pii: row.piiDigest, prev: row.prevHash }),
  );
}

function checkEvent(event: AuditEventInput): string | null {
  if (typeof event !== "object" || event === null) throw new AuditEventError("An audit event must be an object");
  if (typeof event.action !== "string" || !ACTION.test(event.action)) throw new AuditEventError(`Invalid audit action ${JSON.stringify(event.action)}`);
  if (!RESULTS.has(event.result)) throw new AuditEventError(`Invalid audit result ${JSON.stringify(event.result)} (success, failure or denied)`);
  if (event.tenantId !== null && (typeof event.tenantId !== "string" || event.tenantId === "")) throw new AuditEventError("tenantId must be a non-empty string or null");
  if (event.details === undefined || event.details === null) return null;
  if (typeof event.details !== "object" || Array.isArray(event.details)) throw new AuditEventError("details must be a plain object");
  try {
    return canonicalJson(event.details);
  } catch (error) {
    throw new AuditEventError(`details cannot be stored: ${(error as Error).message}`);
  }
}

/**
 * Appends one event to its tenant's chain inside the given transaction. The tenant's head row
 * is locked (an upsert on `audit_heads`) for the rest of the transaction, so concurrent appends queue
 * instead of forking the chain. Use it to record an event atomically with the change it describes.
 *
 * @example
 * await db.transaction().execute(async (trx) => {
 *   await trx.updateTable("teams").set({ name }).where("id", "=", teamId).execute();
 *   await appendAuditEvent(trx, { tenantId: teamId, actorId, action: "team.rename", target: `team:${teamId}`, result: "success" });
 * });
 */
export async function appendAuditEvent(trx: Kysely<any>, event: AuditEventInput, at: Date = new Date()): Promise<AuditRecord> {
  const details = checkEvent(event);
  const key = tenantKey(event.tenantId);
  // One round trip creates the head on first use, locks it until commit, and reads it: a
  // concurrent append for the same tenant waits here and then sees this append's head.
  const head = await trx
    .insertInto("audit_heads")
    .values({ tenant_key: key, seq: 0, hash: AUDIT_GENESIS_HASH })
    .onConflict((oc) => oc.column("tenant_key").doUpdateSet({ seq: sql`audit_heads.seq` }))
    .returning(["seq", "hash"])
    .executeTakeFirstOrThrow();
  const seq = Number(head.seq) + 1;
  // Millisecond precision, so the timestamp read back hashes the same as the one written.
  const when = new Date(Math.floor(at.getTime()));
  const salt = randomBytes(16).toString("hex");
  const pii = { actorId: event.actorId ?? null, target: event.target ?? null, ip: event.ip ?? null, requestId: event.requestId ?? null, details: details === null ? null : JSON.parse(details) };
  const piiDigest = auditPiiDigest(salt, pii);
  const hash = auditRowHash({ tenantKey: key, seq, at: when, action: event.action, result: event.result, piiDigest, prevHash: head.hash });
  // The row and the new head in one statement.
  await trx
    .with("appended", (db) =>
      db.insertInto("audit_log").values({
        tenant_key: key,
        seq,
        at: when,
        action: event.action,
        result: event.result,
        actor_id: pii.actorId,
        target: pii.target,
        ip: pii.ip,
        request_id: pii.requestId,
        details,
        pii_salt: salt,
        pii_digest: piiDigest,
        prev_hash: head.hash,
        hash,
      }),
    )
    .updateTable("audit_heads")
    .set({ seq, hash })
    .where("tenant_key", "=", key)
    .execute();
  return { tenantId: event.tenantId, seq, at: when, ...pii, result: event.result, action: event.action, details: pii.details, piiDigest, prevHash: head.hash, hash, scrubbedAt: null };
}

export interface AuditLogOptions {
  /** Clock for event timestamps (tests move it by hand). Default `() => new Date()`. */
  now?: () => Date;
  /**
   * Mask secrets (`redactSecretsDeep`) in `details` and `target` before they are stored, in case a
   * caller passes a token along. Default true.
   */
  redact?: boolean;
  /** Signs `checkpoint()`s and verifies them in `verify(tenant, checkpoint)`. */
  checkpointKey?: AuditCheckpointKey;
}

/** An event about one person, as a data export shows it (`AuditLog.subjectEvents`). */
export type AuditSubjectEvent = Pick<AuditRecord, "tenantId" | "seq" | "at" | "action" | "result" | "actorId" | "target" | "ip" | "requestId" | "details">;

/**
 * The kysely audit log: an `AuditSink` plus reading, verifying and the data-rights operations
 * (what the log holds about a person, and erasing it). Made on a transaction, every method runs
 * in that transaction.
 */
export interface AuditLog extends AuditSink {
  /** Appends and returns the stored record. */
  append(event: AuditEventInput): Promise<AuditRecord>;
  /** A tenant's events in sequence order, `limit` at a time after `afterSeq`. */
  list(tenantId: string | null, options?: { afterSeq?: number; limit?: number }): Promise<AuditRecord[]>;
  /** Walks the chain; with a checkpoint, also checks the chain still holds the row it signed (`checkpointKey` needed). */
  verify(tenantId: string | null, checkpoint?: AuditCheckpoint): Promise<AuditChainReport>;
  /** The signed head of a tenant's chain (see `auditCheckpoint`); needs the `checkpointKey` option. */
  checkpoint(tenantId: string | null): Promise<AuditCheckpoint>;
  /**
   * Every event, across tenants, that a user performed or that targets `user:<id>`, plus the
   * anonymous rows of their own requests (same request id and address as one of theirs, e.g. the
   * request log's row of their signup), oldest first.
   */
  subjectEvents(userId: string): Promise<AuditSubjectEvent[]>;
  /** The client addresses of the rows a user performed or that name them (signup, logins, failed logins). */
  subjectAddresses(userId: string): Promise<string[]>;
  /**
   * Erases the personal fields of the rows matching `where`, keeping every hash, and records the
   * scrub in each affected chain (see `scrubAuditPii`). Returns the number of rows scrubbed.
   */
  scrub(where: AuditScrubWhere): Promise<number>;
}

/**
 * An append-only, hash-chained audit log in the `auditMigrations` tables, one chain per tenant.
 * Each append is its own short transaction (or joins the one it is given when `db` is a
 * transaction).
 *
 * @example
 * const audit = createAuditLog(db);
 * const auth = createAuthService({ stores, keys, issuer, audience, audit });
 * app.use(auditRequests(audit));
 * (await audit.verify(teamId)).ok; // true
 */
export function createAuditLog(db: Kysely<any>, options: AuditLogOptions = {}): AuditLog {
  if (typeof db?.selectFrom !== "function") throw new ConfigError("createAuditLog needs a Kysely database or transaction");
  if (options.now !== undefined && typeof options.now !== "function") throw new ConfigError("createAuditLog: now must be a function returning a Date");
  if (options.redact !== undefined && typeof options.redact !== "boolean") throw new ConfigError("createAuditLog: redact must be true or false");
  const now = options.now ?? (() => new Date());
  const redact = options.redact ?? true;
  if (options.checkpointKey !== undefined) checkKey(options.checkpointKey, false);
  const requireKey = () => {
    if (!options.checkpointKey) throw new ConfigError("createAuditLog: checkpoints need the checkpointKey option");
    return options.checkpointKey;
  };
  const append = (input: AuditEventInput) => {
    checkEvent(input);
    const event: AuditEventInput = redact
      ? { ...input, target: typeof input.target === "string" ? redactSecrets(input.target) : input.target, ...(input.details ? { details: redactSecretsDeep(input.details) } : {}) }
      : input;
    return db.isTransaction ? appendAuditEvent(db, event, now()) : db.transaction().execute((trx) => appendAuditEvent(trx, event, now()));
  };
  return {
    append,
    record: async (event) => void (await append(event)),
    list: (tenantId, o = {}) => listAuditEvents(db, tenantId, o),
    verify: async (tenantId, checkpoint) => verifyAuditChain(db, tenantId, checkpoint ? { checkpoint, keys: requireKey() } : {}),
    checkpoint: async (tenantId) => auditCheckpoint(db, tenantId, requireKey(), { now }),
    subjectEvents: (userId) => subjectEvents(db, userId),
    subjectAddresses: (userId) => subjectAddresses(db, userId),
    scrub: (where) => (db.isTransaction ? scrubAuditPii(db, where, now()) : db.transaction().execute((trx) => scrubAuditPii(trx, where, now()))),
  };
}

const ownRows = (userId: string) => (eb: any) => eb.or([eb("actor_id", "=", userId), eb("target", "=", `user:${userId}`)]);

async function subjectEvents(db: Kysely<any>, userId: string): Promise<AuditSubjectEvent[]> {
  const rows = await db
    .selectFrom("audit_log as a")
    .select(["a.tenant_key", "a.seq", "a.at", "a.action", "a.result", "a.actor_id", "a.target", "a.ip", "a.request_id", "a.details"])
    .where((eb) =>
      eb.or([
        eb("a.actor_id", "=", userId),
        eb("a.target", "=", `user:${userId}`),
        eb.and([
          eb("a.actor_id", "is", null),
          eb.exists(
            eb
              .selectFrom("audit_log as o")
              .select(sql`1`.as("one"))
              .whereRef("o.request_id", "=", "a.request_id")
              .whereRef("o.ip", "=", "a.ip")
              .where((inner: any) => ownRows(userId)(inner)),
          ),
        ]),
      ]),
    )
    .orderBy("a.at")
    .orderBy("a.tenant_key")
    .orderBy("a.seq")
    .execute();
  return rows.map((r) => ({
    tenantId: r.tenant_key === "" ? null : r.tenant_key,
    seq: Number(r.seq),
    at: new Date(r.at),
    action: r.action,
    result: r.result,
    actorId: r.actor_id,
    target: r.target,
    ip: r.ip,
    requestId: r.request_id,
    details: r.details === null ? null : JSON.parse(r.details),
  }));
}

async function subjectAddresses(db: Kysely<any>, userId: string): Promise<string[]> {
  const rows = await db.selectFrom("audit_log").select("ip").distinct().where("ip", "is not", null).where(ownRows(userId)).execute();
  return rows.map((r) => r.ip as string).sort();
}

function toRecord(row: any): AuditRecord {
  return {
    tenantId: row.tenant_key === "" ? null : row.tenant_key,
    seq: Number(row.seq),
    at: new Date(row.at),
    action: row.action,
    result: row.result,
    actorId: row.actor_id,
    target: row.target,
    ip: row.ip,
    requestId: row.request_id,
    details: row.details === null ? null : JSON.parse(row.details),
    piiDigest: row.pii_digest,
    prevHash: row.prev_hash,
    hash: row.hash,
    scrubbedAt: row.scrubbed_at === null ? null : new Date(row.scrubbed_at),
  };
}

/**
 * Reads a tenant's events in sequence order.
 *
 * @example
 * const page = await listAuditEvents(db, teamId, { afterSeq: 100, limit: 50 });
 */
export async function listAuditEvents(db: Kysely<any>, tenantId: string | null, options: { afterSeq?: number; limit?: number } = {}): Promise<AuditRecord[]> {
  const limit = Math.min(Math.max(options.limit ?? 100, 1), 10_000);
  const rows = await db
    .selectFrom("audit_log")
    .selectAll()
    .where("tenant_key", "=", tenantKey(tenantId))
    .where("seq", ">", options.afterSeq ?? 0)
    .orderBy("seq")
    .limit(limit)
    .execute();
  return rows.map(toRecord);
}

/** Why a chain failed to verify. */
export type AuditChainProblem =
  /** A sequence number is missing (a row was deleted) or out of place. */
  | "sequence_gap"
  /** `prev_hash` is not the previous row's hash (rows swapped, inserted or re-chained). */
  | "broken_link"
  /** The personal fields no longer match their digest (edited actor, ip, target, details …). */
  | "payload_mismatch"
  /** The row's own fields (time, action, result, digest) no longer match its hash. */
  | "hash_mismatch"
  /** The head row disagrees with the last row (rows removed from the end). */
  | "head_mismatch"
  /** A row's personal fields were blanked without the `audit.scrub` record every scrub appends. */
  | "unrecorded_scrub"
  /** The chain ends before the checkpoint's head: rows were removed from the end (the head row moved back with them). */
  | "checkpoint_truncated"
  /** The row at the checkpoint's sequence number has another hash: the chain was rewritten up to or before it. */
  | "checkpoint_mismatch"
  /** The checkpoint's signature does not verify, its key id is unknown, or it is for another chain. */
  | "checkpoint_invalid";

export type AuditChainReport =
  | {
      ok: true;
      tenantId: string | null;
      rows: number;
      headHash: string;
      /** The checkpoint the chain was checked against, when one was given. */
      checkpoint?: { seq: number; keyId: string };
      /** The `audit.scrub` records in the chain and how many rows they account for. */
      scrubs: { records: number; rows: number };
    }
  | { ok: false; tenantId: string | null; rows: number; seq: number; problem: AuditChainProblem; message: string };

/**
 * Walks a tenant's chain from sequence 1 and returns `ok`, or the first row that does not
 * verify and why. Scrubbed rows still verify their place in the chain and their non-personal
 * fields; only their (erased) personal fields can no longer be checked against the digest.
 *
 * @example
 * const report = await verifyAuditChain(db, teamId);
 * if (!report.ok) console.error(`audit row ${report.seq}: ${report.problem}`);
 */
export async function verifyAuditChain(db: Kysely<any>, tenantId: string | null, options: VerifyAuditChainOptions = {}): Promise<AuditChainReport> {
  const key = tenantKey(tenantId);
  const checkpoint = options.checkpoint;
  if (checkpoint !== undefined) {
    const invalid = checkpointProblem(checkpoint, tenantId, options.keys);
    if (invalid) return { ok: false, tenantId, rows: 0, seq: Number(checkpoint?.seq) || 0, problem: "checkpoint_invalid", message: invalid };
  }
  let expectedSeq = 1;
  let prevHash = AUDIT_GENESIS_HASH;
  // Scrubbed rows not yet accounted for by a later audit.scrub record.
  const unaccounted = new Set<number>();
  let scrubRecords = 0;
  let scrubbedRows = 0;
  const fail = (seq: number, problem: AuditChainProblem, message: string): AuditChainReport => ({ ok: false, tenantId, rows: expectedSeq - 1, seq, problem, message });
  for (;;) {
    const rows = await db.selectFrom("audit_log").selectAll().where("tenant_key", "=", key).where("seq", ">=", expectedSeq).orderBy("seq").limit(1000).execute();
    for (const row of rows) {
      const seq = Number(row.seq);
      if (seq !== expectedSeq) return fail(expectedSeq, "sequence_gap", `Row ${expectedSeq} is missing (next is ${seq})`);
      if (row.prev_hash !== prevHash) return fail(seq, "broken_link", `Row ${seq} does not link to row ${seq - 1}`);
      if (row.scrubbed_at === null) {
        let details: unknown = null;
        try {
          details = row.details === null ? null : JSON.parse(row.details);
        } catch {
          return fail(seq, "payload_mismatch", `Row ${seq} has unreadable details`);
        }
        const digest = row.pii_salt === null ? "" : auditPiiDigest(row.pii_salt, { actorId: row.actor_id, target: row.target, ip: row.ip, requestId: row.request_id, details });
        if (digest !== row.pii_digest) return fail(seq, "payload_mismatch", `Row ${seq}'s actor, target, ip, request id or details were changed`);
        if (row.action === AUDIT_SCRUB_ACTION) {
          scrubRecords++;
          const ranges = (details as { seqs?: unknown } | null)?.seqs;
          if (Array.isArray(ranges)) {
            for (const range of ranges) {
              if (!Array.isArray(range) || range.length !== 2) continue;
              const [from, to] = range.map(Number) as [number, number];
              if (to - from > unaccounted.size) {
                for (const s of [...unaccounted]) if (s >= from && s <= to) unaccounted.delete(s);
              } else {
                for (let s = from; s <= to; s++) unaccounted.delete(s);
              }
            }
          }
        }
      } else {
        scrubbedRows++;
        unaccounted.add(seq);
      }
      const hash = auditRowHash({ tenantKey: key, seq, at: new Date(row.at), action: row.action, result: row.result, piiDigest: row.pii_digest, prevHash: row.prev_hash });
      if (hash !== row.hash) return fail(seq, "hash_mismatch", `Row ${seq}'s time, action or result were changed`);
      if (checkpoint && seq === checkpoint.seq && row.hash !== checkpoint.hash) {
        return fail(seq, "checkpoint_mismatch", `Row ${seq} is not the row the checkpoint signed: the chain was rewritten`);
      }
      prevHash = row.hash;
      expectedSeq++;
    }
    if (rows.length < 1000) break;
  }
  const head = await db.selectFrom("audit_heads").select(["seq", "hash"]).where("tenant_key", "=", key).executeTakeFirst();
  const headSeq = head ? Number(head.seq) : 0;
  if (headSeq !== expectedSeq - 1 || (head && head.hash !== prevHash)) {
    return fail(Math.min(headSeq, expectedSeq), "head_mismatch", `The chain head is at ${headSeq} but rows end at ${expectedSeq - 1}`);
  }
  if (checkpoint && expectedSeq - 1 < checkpoint.seq) {
    return fail(expectedSeq, "checkpoint_truncated", `The chain ends at row ${expectedSeq - 1} but the checkpoint signed row ${checkpoint.seq}`);
  }
  if (unaccounted.size > 0) {
    const first = Math.min(...unaccounted);
    return { ok: false, tenantId, rows: expectedSeq - 1, seq: first, problem: "unrecorded_scrub", message: `Row ${first}'s personal fields were erased without a scrub record` };
  }
  return {
    ok: true,
    tenantId,
    rows: expectedSeq - 1,
    headHash: prevHash,
    ...(checkpoint ? { checkpoint: { seq: checkpoint.seq, keyId: checkpoint.keyId } } : {}),
    scrubs: { records: scrubRecords, rows: scrubbedRows },
  };
}

/**
 * A key that signs or verifies audit checkpoints. `hmac-sha256` uses a shared secret (at least 32
 * bytes) for both; `ed25519` signs with the private key and verifies with the public one, so the
 * verifier can hold only the public key. `id` is written into every checkpoint, so keys can be
 * rotated: keep the old ones in the verifier's list.
 */
export type AuditCheckpointKey =
  | { id: string; algorithm: "hmac-sha256"; secret: string | Uint8Array }
  | { id: string; algorithm: "ed25519"; privateKey?: KeyObject | string; publicKey?: KeyObject | string };

/**
 * The signed head of one tenant's chain at a moment: its sequence number and hash. Store it where
 * the database credentials cannot reach (object storage with retention, another account, a log
 * shipper); `verifyAuditChain(db, tenant, { checkpoint, keys })` then detects rows removed from
 * the end or a chain rewritten and re-hashed behind it, which the chain alone cannot show.
 */
export interface AuditCheckpoint {
  v: 1;
  tenantId: string | null;
  /** The head's sequence number (0 for an empty chain). */
  seq: number;
  /** The head's hash (`AUDIT_GENESIS_HASH` for an empty chain). */
  hash: string;
  /** When the checkpoint was taken, ISO 8601. */
  at: string;
  algorithm: AuditCheckpointKey["algorithm"];
  keyId: string;
  /** Base64url signature over the canonical JSON of the other fields. */
  signature: string;
}

export interface VerifyAuditChainOptions {
  /** A checkpoint taken earlier: the chain must still hold its row, unchanged. */
  checkpoint?: AuditCheckpoint;
  /** The keys checkpoints may be signed with (by `id`); needed with `checkpoint`. */
  keys?: AuditCheckpointKey | readonly AuditCheckpointKey[];
}

const ID = /^[A-Za-z0-9._:-]{1,100}$/;

/** Throws `ConfigError` for a key that cannot sign (or verify, when `forSigning` is false). */
function checkKey(key: AuditCheckpointKey, forSigning: boolean): void {
  if (typeof key !== "object" || key === null || typeof key.id !== "string" || !ID.test(key.id)) {
    throw new ConfigError("An audit checkpoint key needs an id (letters, digits, . _ : -)");
  }
  if (key.algorithm === "hmac-sha256") {
    const length = typeof key.secret === "string" ? Buffer.byteLength(key.secret) : key.secret instanceof Uint8Array ? key.secret.length : 0;
    if (length < 32) throw new ConfigError(`Audit checkpoint key ${key.id}: an hmac-sha256 secret needs at least 32 bytes`);
  } else if (key.algorithm === "ed25519") {
    if (forSigning && !key.privateKey) throw new ConfigError(`Audit checkpoint key ${key.id}: signing with ed25519 needs privateKey`);
    if (!key.privateKey && !key.publicKey) throw new ConfigError(`Audit checkpoint key ${key.id}: ed25519 needs publicKey or privateKey`);
  } else {
    throw new ConfigError(`Audit checkpoint key ${(key as { id?: unknown }).id}: algorithm must be hmac-sha256 or ed25519`);
  }
}

const signedText = (c: Omit<AuditCheckpoint, "signature">) =>
  canonicalJson({ v: c.v, tenant: tenantKey(c.tenantId), seq: c.seq, hash: c.hash, at: c.at, algorithm: c.algorithm, keyId: c.keyId });

function signCheckpoint(body: Omit<AuditCheckpoint, "signature">, key: AuditCheckpointKey): string {
  const text = Buffer.from(signedText(body), "utf8");
  if (key.algorithm === "hmac-sha256") return createHmac("sha256", key.secret).update(text).digest("base64url");
  const privateKey = typeof key.privateKey === "string" ? createPrivateKey(key.privateKey) : key.privateKey!;
  return signBytes(null, text, privateKey).toString("base64url");
}

/** Why a checkpoint cannot be trusted, or null when its signature holds and it is for this chain. */
function checkpointProblem(checkpoint: AuditCheckpoint, tenantId: string | null, keys: VerifyAuditChainOptions["keys"]): string | null {
  const list = keys === undefined ? [] : Array.isArray(keys) ? keys : [keys as AuditCheckpointKey];
  if (list.length === 0) throw new ConfigError("verifyAuditChain: a checkpoint needs keys to verify it with");
  for (const key of list) checkKey(key, false);
  const c = checkpoint as Partial<AuditCheckpoint> | null;
  if (
    typeof c !== "object" ||
    c === null ||
    c.v !== 1 ||
    !Number.isSafeInteger(c.seq) ||
    (c.seq as number) < 0 ||
    typeof c.hash !== "string" ||
    !/^[0-9a-f]{64}$/.test(c.hash) ||
    typeof c.at !== "string" ||
    typeof c.keyId !== "string" ||
    typeof c.signature !== "string"
  ) {
    return "The checkpoint is malformed";
  }
  if (tenantKey(c.tenantId ?? null) !== tenantKey(tenantId)) return "The checkpoint is for another chain";
  const key = list.find((k) => k.id === c.keyId && k.algorithm === c.algorithm);
  if (!key) return `No ${String(c.algorithm)} key has id ${c.keyId}`;
  const text = Buffer.from(signedText(c as AuditCheckpoint), "utf8");
  const signature = Buffer.from(c.signature, "base64url");
  if (key.algorithm === "hmac-sha256") {
    const expected = createHmac("sha256", key.secret).update(text).digest();
    return expected.length === signature.length && timingSafeEqual(expected, signature) ? null : "The checkpoint's signature does not verify";
  }
  const publicKey = key.publicKey
    ? typeof key.publicKey === "string"
      ? createPublicKey(key.publicKey)
      : key.publicKey
    : createPublicKey(typeof key.privateKey === "string" ? createPrivateKey(key.privateKey) : key.privateKey!);
  try {
    return verifySignature(null, text, publicKey, signature) ? null : "The checkpoint's signature does not verify";
  } catch {
    return "The checkpoint's signature does not verify";
  }
}

/**
 * Signs the current head of a tenant's chain (its sequence number and hash) with a key from the
 * host's configuration, for the host to store out of the database's reach. Pass the result and
 * the key(s) to `verifyAuditChain` later.
 *
 * @example
 * const key = { id: "audit-2026", algorithm: "hmac-sha256", secret: process.env.AUDIT_CHECKPOINT_KEY! } as const;
 * const checkpoint = await auditCheckpoint(db, teamId, key);
 * await bucket.put(`audit/${teamId}/${checkpoint.seq}.json`, JSON.stringify(checkpoint));
 * // later
 * const report = await verifyAuditChain(db, teamId, { checkpoint, keys: [key] });
 */
export async function auditCheckpoint(db: Kysely<any>, tenantId: string | null, key: AuditCheckpointKey, options: { now?: () => Date } = {}): Promise<AuditCheckpoint> {
  checkKey(key, true);
  const head = await db.selectFrom("audit_heads").select(["seq", "hash"]).where("tenant_key", "=", tenantKey(tenantId)).executeTakeFirst();
  const body: Omit<AuditCheckpoint, "signature"> = {
    v: 1,
    tenantId,
    seq: head ? Number(head.seq) : 0,
    hash: head ? head.hash : AUDIT_GENESIS_HASH,
    at: (options.now ?? (() => new Date()))().toISOString(),
    algorithm: key.algorithm,
    keyId: key.id,
  };
  return { ...body, signature: signCheckpoint(body, key) };
}

/** The action of the chain record every scrub leaves behind. */
export const AUDIT_SCRUB_ACTION = "audit.scrub";

/** Sorted sequence numbers as inclusive ranges: [1, 2, 3, 7] → [[1, 3], [7, 7]]. */
function toRanges(seqs: number[]): [number, number][] {
  const ranges: [number, number][] = [];
  for (const seq of [...seqs].sort((a, b) => a - b)) {
    const last = ranges.at(-1);
    if (last && seq === last[1] + 1) last[1] = seq;
    else ranges.push([seq, seq]);
  }
  return ranges;
}

export interface AuditScrubWhere {
  /** Rows the user performed. */
  actorId?: string;
  /** Rows about these targets, e.g. `user:<id>`. */
  targets?: string[];
  /** Rows recorded from these client addresses. */
  ips?: string[];
  /** Only rows older than this; alone, every row older than this (retention). */
  before?: Date;
}

/**
 * Erases the personal fields (actor, target, ip, request id, details and the salt) of the audit
 * rows matching `where`, keeping every hash, and appends one `audit.scrub` record per affected
 * chain naming the scrubbed sequence numbers (no personal data), all in the given transaction.
 * `verifyAuditChain` then shows the scrubs, and reports any scrubbed row no record accounts for.
 *
 * The update runs inside the `gk_audit_scrub` database function (SECURITY DEFINER, owned by the
 * role that ran the migrations); the table's trigger lets a scrub through only there. Run the
 * application as a role that does not own the tables and grant it `EXECUTE` on that function:
 * then the application's credentials cannot blank rows any other way. Returns the number of rows
 * scrubbed.
 *
 * @example
 * await db.transaction().execute((trx) => scrubAuditPii(trx, { actorId: userId }));
 */
export async function scrubAuditPii(trx: Kysely<any>, where: AuditScrubWhere, at: Date = new Date()): Promise<number> {
  if (!trx.isTransaction) throw new ConfigError("scrubAuditPii must run inside a transaction");
  const targets = where.targets?.length ? where.targets : null;
  const ips = where.ips?.length ? where.ips : null;
  if (where.actorId === undefined && !targets && !ips && where.before === undefined) throw new ConfigError("scrubAuditPii needs actorId, targets, ips or before");
  const when = new Date(Math.floor(at.getTime()));
  const { rows } = await sql<{ tenant_key: string; seq: string | number }>`
    select tenant_key, seq from gk_audit_scrub(${where.actorId ?? null}, ${targets}::text[], ${where.before ?? null}::timestamptz, ${when}::timestamptz, ${ips}::text[])`.execute(trx);
  const byTenant = new Map<string, number[]>();
  for (const row of rows) {
    const list = byTenant.get(row.tenant_key) ?? [];
    list.push(Number(row.seq));
    byTenant.set(row.tenant_key, list);
  }
  for (const [key, seqs] of [...byTenant].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    await appendAuditEvent(
      trx,
      { tenantId: key === "" ? null : key, actorId: null, action: AUDIT_SCRUB_ACTION, result: "success", details: { seqs: toRanges(seqs), count: seqs.length } },
      when,
    );
  }
  return rows.length;
}
