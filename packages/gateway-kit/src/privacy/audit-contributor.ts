import { sql, type Kysely } from "kysely";
import { scrubAuditPii } from "../audit/audit-log.js";
import type { DataRightsContributor } from "./contributor.js";
import { eraseIpTraces, userIpAddresses } from "./ip-traces.js";

/**
 * The audit log's part in data rights. Export: every event the user performed or that targets
 * `user:<id>`, across tenants, with its place in the chain, and the unauthenticated rows of their
 * own requests (same request id and address, e.g. the request log's row of their signup).
 * Erasure: the personal fields (actor, target, ip, request id, details) and salts of those events
 * and of every row recorded from the user's addresses are removed, and the lockout counters and
 * rate-limit buckets of those addresses deleted; action, result, time and all hashes stay, and each
 * scrub leaves an `audit.scrub` record, so `verifyAuditChain` still passes.
 *
 * @example
 * await eraseUserData(db, userId, [authDataRights(), auditDataRights()]);
 */
export function auditDataRights(options: { now?: () => Date } = {}): DataRightsContributor {
  const now = options.now ?? (() => new Date());
  return {
    name: "audit",
    async export(db: Kysely<any>, userId: string) {
      const own = (eb: any) => eb.or([eb("actor_id", "=", userId), eb("target", "=", `user:${userId}`)]);
      // Plus the unauthenticated rows of the user's own requests (e.g. the request log's row for
      // their signup or login): no actor, but the same request id and address as one of theirs.
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
                  .where((inner: any) => own(inner)),
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
      // Addresses first: scrubbing the user's rows erases the IPs that identify their other rows.
      const ips = await userIpAddresses(db, userId);
      await scrubAuditPii(db, { actorId: userId, targets: [`user:${userId}`] }, now());
      await eraseIpTraces(db, userId, ips, now());
    },
  };
}
