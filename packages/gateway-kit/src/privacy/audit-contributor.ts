import type { Kysely } from "kysely";
import { createAuditLog } from "../audit/index.js";
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
    export: (db: Kysely<any>, userId: string) => createAuditLog(db).subjectEvents(userId),
    async erase(db: Kysely<any>, userId: string) {
      // Addresses first: scrubbing the user's rows erases the IPs that identify their other rows.
      const ips = await userIpAddresses(db, userId);
      const at = now();
      await createAuditLog(db, { now: () => at }).scrub({ actorId: userId, targets: [`user:${userId}`] });
      await eraseIpTraces(db, userId, ips, at);
    },
  };
}
