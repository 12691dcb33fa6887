import { sql, type Kysely } from "kysely";
import * as z from "zod";
import { createAuditLog } from "../audit/index.js";
import { tableExists } from "./ip-traces.js";
import { ConfigError } from "../errors.js";
import { parseOptions } from "../options.js";

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

/** Retention periods, in days, for the gateway-kit tables (auth, audit, limits, budgets, billing). */
export const RetentionSettings = z
  .object({
    /** Audit events keep their personal fields (actor, ip, target, details) this long; the chain itself stays. Default 365. */
    auditDetails: Days.default(365),
    /**
     * Sessions (and their refresh tokens, and so their IP and user agent) are deleted this long after
     * they expired, were revoked or were last used (a session that idled out is never revoked).
     * Keep it at least the auth service's idle timeout (default 7 days). Default 30.
     */
    sessions: Days.default(30),
    /** Login lockout counters are deleted this long after their last failure, once unlocked. Default 30. */
    loginAttempts: Days.default(30),
    /**
     * SMS counters (per user, per hashed number, in all) are deleted once their window started this
     * long ago; keep it longer than the longest `smsLimits` window (at most 31 days). Default 32.
     * A challenge's counter goes with its challenge.
     */
    authCounters: Days.default(32),
    /** Pending auth flows (MFA challenges, OAuth state) are deleted this long after they expired. Default 1. */
    authFlows: Days.default(1),
    /** Rate-limit buckets (keyed by IP, user or API key) are deleted this long after their last use. Default 1. */
    rateLimitBuckets: Days.default(1),
    /** Anomaly baselines are deleted this long after the subject's last active bucket. Default 90. */
    anomalyStates: Days.default(90),
    /** Run slots whose lease ran out this long ago are deleted. Default 1. */
    runSlots: Days.default(1),
    /** Budget charge records (idempotency keys, settled reservations) and delivered alerts are deleted after this. Default 400. */
    budgetRecords: Days.default(400),
    /** Processed Stripe webhook event ids are deleted after this (Stripe retries for 3 days). Default 90. */
    stripeEvents: Days.default(90),
    /** Checkouts that were never paid (open, expired, failed) are deleted after this; paid ones are financial records and stay. Default 90. */
    abandonedCheckouts: Days.default(90),
  })
  .strict();
export type RetentionSettings = z.input<typeof RetentionSettings>;

/**
 * The retention rules for the gateway-kit tables, from settings in days. Rules for tables a host
 * did not migrate (limits, budgets, billing) report 0. Ledger rows are financial records and have
 * no rule: they hold no personal data.
 *
 * @example
 * const rules = gatewayRetentionRules({ auditDetails: 180, sessions: 14 });
 * await purgeExpired(db, rules);
 */
export function gatewayRetentionRules(settings: RetentionSettings = {}): RetentionRule[] {
  const s = parseOptions(RetentionSettings, settings, "retention settings");
  return [
    {
      name: "audit_details",
      days: s.auditDetails,
      purge: (trx, cutoff, now) => createAuditLog(trx, { now: () => now }).scrub({ before: cutoff }),
    },
    {
      name: "auth_sessions",
      days: s.sessions,
      async purge(trx, cutoff) {
        const result = await trx
          .deleteFrom("auth_sessions")
          .where((eb) => eb.or([eb("expires_at", "<", cutoff), eb("revoked_at", "<", cutoff), eb("last_seen_at", "<", cutoff)]))
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
      name: "auth_counters",
      days: s.authCounters,
      purge: ifTable("auth_counters", async (trx, cutoff) => {
        const windows = await trx
          .deleteFrom("auth_counters")
          .where("key", "not like", "sms:challenge:%")
          .where("window_start", "<", cutoff)
          .executeTakeFirst();
        // Per-challenge counters have no window: they live exactly as long as their challenge.
        const challenges = await trx
          .deleteFrom("auth_counters")
          .where("key", "like", "sms:challenge:%")
          .where(({ not, exists, selectFrom, ref }) =>
            not(exists(selectFrom("auth_flows").select("auth_flows.id").where(sql<string>`'sms:challenge:' || auth_flows.id`, "=", ref("auth_counters.key")))),
          )
          .executeTakeFirst();
        return deleted(windows) + deleted(challenges);
      }),
    },
    {
      name: "auth_flows",
      days: s.authFlows,
      async purge(trx, cutoff) {
        const result = await trx.deleteFrom("auth_flows").where("expires_at", "<", cutoff).executeTakeFirst();
        return Number(result.numDeletedRows);
      },
    },
    ...moduleRetentionRules(s),
  ];
}

/** Runs `purge` only when the host migrated `table`; otherwise reports 0. */
function ifTable(table: string, purge: RetentionRule["purge"]): RetentionRule["purge"] {
  return async (trx, cutoff, now) => ((await tableExists(trx, table)) ? purge(trx, cutoff, now) : 0);
}

const deleted = (result: { numDeletedRows: bigint }) => Number(result.numDeletedRows);

/** Rules for the limits, budgets and billing tables; each is skipped when its table is absent. */
function moduleRetentionRules(s: z.output<typeof RetentionSettings>): RetentionRule[] {
  return [
    {
      name: "rate_limit_buckets",
      days: s.rateLimitBuckets,
      purge: ifTable("rate_limit_buckets", async (trx, cutoff) =>
        deleted(await trx.deleteFrom("rate_limit_buckets").where("updated_ms", "<", cutoff.getTime()).executeTakeFirst()),
      ),
    },
    {
      name: "anomaly_states",
      days: s.anomalyStates,
      purge: ifTable("anomaly_states", async (trx, cutoff) =>
        deleted(
          await trx
            .deleteFrom("anomaly_states")
            .where(sql<boolean>`case when state like '{%' then (state::json ->> 'bucketStart')::float8 < ${cutoff.getTime()} else false end`)
            .executeTakeFirst(),
        ),
      ),
    },
    {
      name: "run_slots",
      days: s.runSlots,
      purge: ifTable("run_slots", async (trx, cutoff) => deleted(await trx.deleteFrom("run_slots").where("lease_expires_at", "<", cutoff).executeTakeFirst())),
    },
    {
      name: "budget_records",
      days: s.budgetRecords,
      purge: ifTable("budget_charges", async (trx, cutoff) => {
        const charges = await trx
          .deleteFrom("budget_charges")
          .where("created_at", "<", cutoff)
          // An open reservation still has to be settled or swept.
          .where((eb) => eb.or([eb("mode", "<>", "reserve"), eb("settled_at", "is not", null)]))
          .executeTakeFirst();
        const alerts = await trx.deleteFrom("budget_alerts").where("fired_at", "<", cutoff).where("delivered_at", "is not", null).executeTakeFirst();
        return deleted(charges) + deleted(alerts);
      }),
    },
    {
      name: "stripe_events",
      days: s.stripeEvents,
      purge: ifTable("stripe_events", async (trx, cutoff) => deleted(await trx.deleteFrom("stripe_events").where("received_at", "<", cutoff).executeTakeFirst())),
    },
    {
      name: "abandoned_checkouts",
      days: s.abandonedCheckouts,
      purge: ifTable("billing_checkouts", async (trx, cutoff) =>
        deleted(
          await trx
            .deleteFrom("billing_checkouts")
            .where("created_at", "<", cutoff)
            .where("status", "in", ["open", "expired", "failed"])
            .where("grant_transaction_id", "is", null)
            .executeTakeFirst(),
        ),
      ),
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
    if (names.has(rule.name)) throw new ConfigError(`Two retention rules are named ${rule.name}`);
    if (!Days.safeParse(rule.days).success) throw new ConfigError(`Retention rule ${rule.name}: days must be a positive integer`);
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
