import { ConfigError } from "../errors.js";
import type { Kysely } from "kysely";
import { createAuditLog } from "../audit/index.js";
import type { DataRightsContributor } from "./contributor.js";

/** The archive `exportUserData` returns; `JSON.stringify` it to hand it over. */
export interface UserDataExport {
  format: "keen.user-data/1";
  userId: string;
  exportedAt: string;
  /** One section per contributor, keyed by its `name`. */
  sections: Record<string, unknown>;
}

/** What `eraseUserData` did. */
export interface UserErasureReport {
  userId: string;
  erasedAt: string;
  contributors: string[];
}

/** A contributor list that cannot work (no contributors, duplicate or empty names, missing methods). */
export class DataRightsConfigError extends ConfigError {
  constructor(message: string) {
    super(message);
    this.name = "DataRightsConfigError";
  }
}

function checkContributors(contributors: readonly DataRightsContributor[]): void {
  if (!Array.isArray(contributors) || contributors.length === 0) throw new DataRightsConfigError("At least one DataRightsContributor is needed");
  const names = new Set<string>();
  for (const c of contributors) {
    if (typeof c?.name !== "string" || !/^[a-z][a-z0-9_-]*$/.test(c.name)) throw new DataRightsConfigError(`Contributor name ${JSON.stringify(c?.name)} must be lower-case letters, digits, _ or -`);
    if (typeof c.export !== "function" || typeof c.erase !== "function") throw new DataRightsConfigError(`Contributor ${c.name} needs export() and erase()`);
    if (names.has(c.name)) throw new DataRightsConfigError(`Two contributors are named ${c.name}`);
    names.add(c.name);
  }
}

function checkUserId(userId: string): void {
  if (typeof userId !== "string" || userId.length === 0 || userId.length > 200) throw new DataRightsConfigError("userId must be a non-empty string");
}

/** Turns dates into ISO strings and bigints into strings, so the archive is plain JSON. */
function toJson(value: unknown): unknown {
  if (value instanceof Date) return value.toISOString();
  if (typeof value === "bigint") return value.toString();
  if (Array.isArray(value)) return value.map(toJson);
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJson(v)]));
  return value;
}

/**
 * Collects everything the contributors hold about a user into one JSON archive (GDPR art. 15 and
 * 20). All sections are read in one repeatable-read transaction, so they describe the same moment.
 *
 * @example
 * const archive = await exportUserData(db, userId, [authDataRights(), auditDataRights(), creditsDataRights]);
 * ctx.set("content-disposition", `attachment; filename="keen-${userId}.json"`);
 * ctx.body = archive;
 */
export async function exportUserData(db: Kysely<any>, userId: string, contributors: readonly DataRightsContributor[], options: { now?: () => Date } = {}): Promise<UserDataExport> {
  checkUserId(userId);
  checkContributors(contributors);
  const exportedAt = (options.now ?? (() => new Date()))().toISOString();
  const sections: Record<string, unknown> = {};
  await db
    .transaction()
    .setIsolationLevel("repeatable read")
    .execute(async (trx) => {
      for (const contributor of contributors) sections[contributor.name] = toJson(await contributor.export(trx, userId));
    });
  return { format: "keen.user-data/1", userId, exportedAt, sections };
}

export interface EraseUserDataOptions {
  now?: () => Date;
  /**
   * Records a `privacy.erase` event (target `user:<id>`, the contributor names in details) in the
   * audit log, in the same transaction. The actor is kept unless it is the erased user; no ip is
   * stored, so the record of the erasure holds no personal data of the user.
   */
  recordIn?: { tenantId?: string | null; actorId: string | null; requestId?: string | null };
}

/**
 * Erases or anonymises a user's personal data (GDPR art. 17) through every contributor, in ONE
 * transaction: if any contributor fails, nothing is erased. Contributors keep what must survive
 * (ledger totals, the audit chain's hashes) and drop or scrub the rest.
 *
 * @example
 * await eraseUserData(db, userId, [authDataRights(), auditDataRights(), creditsDataRights], {
 *   recordIn: { tenantId: null, actorId: adminId, requestId: ctx.state.requestId },
 * });
 */
export async function eraseUserData(db: Kysely<any>, userId: string, contributors: readonly DataRightsContributor[], options: EraseUserDataOptions = {}): Promise<UserErasureReport> {
  checkUserId(userId);
  checkContributors(contributors);
  const erasedAt = (options.now ?? (() => new Date()))().toISOString();
  const names = contributors.map((c) => c.name);
  await db.transaction().execute(async (trx) => {
    for (const contributor of contributors) await contributor.erase(trx, userId);
    const trail = options.recordIn;
    if (trail) {
      // Not redacted: the record holds only ids and contributor names, stored as given.
      await createAuditLog(trx, { now: () => new Date(erasedAt), redact: false }).append(
        {
          tenantId: trail.tenantId ?? null,
          actorId: trail.actorId === userId ? null : trail.actorId,
          action: "privacy.erase",
          target: `user:${userId}`,
          result: "success",
          requestId: trail.requestId ?? null,
          details: { contributors: names },
        },
      );
    }
  });
  return { userId, erasedAt, contributors: names };
}
