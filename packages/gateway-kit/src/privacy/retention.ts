import type { Kysely } from "kysely";
import { z } from "zod";
import { scrubAuditPii } from "../audit/audit-log.js";

const DAY_MS = 24 * 60 * 60 * 1000;

/** One kind of data with a lifetime: what is older than `days` goes when `purge` runs. */
export interface RetentionRule {
  /** Key in the purge report, e.g. `auth_sessions`. */
  readonly name: string;
  readonly days: number;
  /** Removes (or scrubs) what is older than `cutoff`; returns how many rows it touched. Runs in a transaction. */
  purge(trx: Kysely<any>, cutoff: Date, now: Date): Promise<number>;
}

const Days = z.number().int().positive().max(36_500);

/** Retention periods, in days, for the gateway-kit tables. */
export const RetentionSettings = z
  .object({
    /** Audit events keep their personal fields (actor, ip, target, details) this long; the chain itself stays. Default 365. */
    auditDetails: Days.default(365),
    /** Sessions (and their refresh tokens) are deleted this long after they expired or were revoked. Default 30. */
    sessions: Days.default(30),
    /** Login lockout counters are deleted this long after their last failure, once unlocked. Default 30. */
    loginAttempts: Days.default(30),
    /** Pending auth flows (MFA challenges, OAuth state) are deleted this long after they expired. Default 1. */
    authFlows: Days.default(1),
  })
  .strict();
export type RetentionSettings = z.input<typeof RetentionSettings>;

/**
 * The retention rules for the auth and audit tables, from settings in days.
 *
 * @example
 * const rules = gatewayRetentionRules({ auditDetails: 180, sessions: 14 });
 * await purgeExpired(db, rules);
 */
export function gatewayRetentionRules(settings: RetentionSettings = {}): RetentionRule[] {
  const parsed = RetentionSettings.safeParse(settings);
  if (!parsed.success) throw new TypeError(`Invalid retention settings: ${z.prettifyError(parsed.error)}`);
  const s = parsed.data;
  return [
    {
      name: "audit_details",
      days: s.auditDetails,
      purge: (trx, cutoff, now) => scrubAuditPii(trx, { before: cutoff }, now),
    },
    {
      name: "auth_sessions",
      days: s.sessions,
      async purge(trx, cutoff) {
        const result = await trx
          .deleteFrom("auth_sessions")
          .where((eb) => eb.or([eb("expires_at", "<", cutoff), eb("revoked_at", "<", cutoff)]))
          .executeTakeFirst();
        return Number(result.numDeletedRows);
      },
    },
    {
      name: "login_attempts",
      days: s.loginAttempts,
      async purge(trx, cutoff, now) {
        const result = await trx
          .deleteFrom("login_attempts")
          .where("last_failure_at", "<", cutoff)
          .where((eb) => eb.or([eb("locked_until", "is", null), eb("locked_until", "<", now)]))
          .executeTakeFirst();
        return Number(result.numDeletedRows);
      },
    },
    {
      name: "auth_flows",
      days: s.authFlows,
      async purge(trx, cutoff) {
        const result = await trx.deleteFrom("auth_flows").where("expires_at", "<", cutoff).executeTakeFirst();
        return Number(result.numDeletedRows);
      },
    },
  ];
}

/**
 * Runs each retention rule once, each in its own transaction, and reports how many rows each
 * touched. Schedule it (e.g. hourly); it is idempotent. A rule that fails rolls back alone and the
 * error is rethrown after the others ran.
 *
 * @example
 * setInterval(() => purgeExpired(db, [...gatewayRetentionRules(), ...myRetentionRules]).catch(log), 3_600_000);
 */
export async function purgeExpired(db: Kysely<any>, rules: readonly RetentionRule[] = gatewayRetentionRules(), options: { now?: () => Date } = {}): Promise<Record<string, number>> {
  const names = new Set<string>();
  for (const rule of rules) {
    if (names.has(rule.name)) throw new TypeError(`Two retention rules are named ${rule.name}`);
    if (!Days.safeParse(rule.days).success) throw new TypeError(`Retention rule ${rule.name}: days must be a positive integer`);
    names.add(rule.name);
  }
  const now = (options.now ?? (() => new Date()))();
  const report: Record<string, number> = {};
  const failures: unknown[] = [];
  for (const rule of rules) {
    const cutoff = new Date(now.getTime() - rule.days * DAY_MS);
    try {
      report[rule.name] = await db.transaction().execute((trx) => rule.purge(trx, cutoff, now));
    } catch (error) {
      failures.push(new Error(`Retention rule ${rule.name} failed: ${(error as Error).message}`, { cause: error }));
    }
  }
  if (failures.length === 1) throw failures[0];
  if (failures.length > 1) throw new AggregateError(failures, `${failures.length} retention rules failed`);
  return report;
}
