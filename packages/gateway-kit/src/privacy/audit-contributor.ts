import type { Kysely } from "kysely";
import { scrubAuditPii } from "../audit/audit-log.js";
import type { DataRightsContributor } from "./contributor.js";

/**
 * The audit log's part in data rights. Export: every event the user performed or that targets
 * `user:<id>`, across tenants, with its place in the chain. Erasure: those events' personal fields
 * (actor, target, ip, request id, details) and their salts are removed; action, result, time and
 * all hashes stay, so `verifyAuditChain` still passes.
 *
 * @example
 * await eraseUserData(db, userId, [authDataRights(), auditDataRights()]);
 */
export function auditDataRights(options: { now?: () => Date } = {}): DataRightsContributor {
  const now = options.now ?? (() => new Date());
  return {
    name: "audit",
    async export(db: Kysely<any>, userId: string) {
      const rows = await db
        .selectFrom("audit_log")
        .select(["tenant_key", "seq", "at", "action", "result", "actor_id", "target", "ip", "request_id", "details"])
        .where((eb) => eb.or([eb("actor_id", "=", userId), eb("target", "=", `user:${userId}`)]))
        .orderBy("at")
        .orderBy("tenant_key")
        .orderBy("seq")
        .execute();
      return rows.map((r) => ({
        tenantId: r.tenant_key === "" ? null : r.tenant_key,
        seq: Number(r.seq),
        at: r.at,
        action: r.action,
        result: r.result,
        actorId: r.actor_id,
        target: r.target,
        ip: r.ip,
        requestId: r.request_id,
        details: r.details === null ? null : JSON.parse(r.details),
      }));
    },
    async erase(db: Kysely<any>, userId: string) {
      await scrubAuditPii(db, { actorId: userId, targets: [`user:${userId}`] }, now());
    },
  };
}
