import { GatewayError } from "../errors.js";
import { sql, type Kysely } from "kysely";
import type { Middleware, ParameterizedContext } from "koa";
import * as z from "zod";
import { clockOption, functionOption, parseOptions } from "../options.js";
import type { LimitTables } from "./tables.js";

/** Raised the first time in a bucket that a subject's usage passes its threshold. */
export interface AnomalyEvent {
  type: "usage.anomaly";
  /** Whose usage, e.g. `user:<id>`. */
  subject: string;
  /** What was measured, e.g. `requests` or `spend`. */
  metric: string;
  bucketStart: Date;
  bucketMs: number;
  /** Usage so far in this bucket. */
  observed: number;
  threshold: number;
  baseline: { mean: number; stdDev: number; buckets: number };
  /** Whether the detector refuses further usage in this bucket. */
  blocked: boolean;
  at: Date;
}

export interface AnomalyVerdict {
  anomalous: boolean;
  /** True while fewer than `minBuckets` active buckets are known: nothing is flagged yet. */
  learning: boolean;
  observed: number;
  threshold: number | undefined;
  /** When the current bucket ends. */
  bucketEnd: Date;
}

/** The per-subject state of the detector. */
export interface AnomalyState {
  bucketStart: number;
  current: number;
  mean: number;
  variance: number;
  buckets: number;
  flagged: boolean;
  /**
   * The growth-limited level: follows the learned mean down at once but up by at most
   * `maxGrowthPerHour`, so a slow ramp cannot carry the threshold with it. Missing in states
   * written before it existed (the mean stands in).
   */
  reference?: number;
}

/**
 * Where per-subject baselines live. `update` must apply `step` atomically per subject (no
 * other update of the same subject in between), so concurrent observations are all counted.
 */
export interface AnomalyStateStore {
  update(subject: string, step: (state: AnomalyState | undefined) => AnomalyState): Promise<AnomalyState>;
}

/**
 * Baselines in this process's memory, forgetting the least recently used subject beyond
 * `maxSubjects`. Each process learns from the traffic it sees.
 *
 * @example
 * createAnomalyDetector({ store: createMemoryAnomalyStateStore(10_000) });
 */
export function createMemoryAnomalyStateStore(maxSubjects = 100_000): AnomalyStateStore {
  const states = new Map<string, AnomalyState>();
  return {
    async update(subject, step) {
      const next = step(states.get(subject));
      states.delete(subject);
      states.set(subject, next);
      if (states.size > maxSubjects) states.delete(states.keys().next().value!);
      return next;
    },
  };
}

/**
 * Baselines in PostgreSQL (or PGlite), shared by every process: each update locks the
 * subject's row for the read-modify-write, so a burst spread over several processes is seen
 * whole and flagged once. Run `limitMigrations` first.
 *
 * @example
 * createAnomalyDetector({ store: createKyselyAnomalyStateStore(db), block: true });
 */
export function createKyselyAnomalyStateStore(db: Kysely<any>): AnomalyStateStore {
  const kdb = db as Kysely<LimitTables>;
  return {
    update(subject, step) {
      return kdb.transaction().execute(async (trx) => {
        // One round trip creates the row on first use, locks it until commit, and reads it.
        const row = await trx
          .insertInto("anomaly_states")
          .values({ subject, state: "null" })
          .onConflict((oc) => oc.column("subject").doUpdateSet({ state: sql`anomaly_states.state` }))
          .returning("state")
          .executeTakeFirstOrThrow();
        const next = step((JSON.parse(row.state) as AnomalyState | null) ?? undefined);
        await trx.updateTable("anomaly_states").set({ state: JSON.stringify(next) }).where("subject", "=", subject).execute();
        return next;
      });
    },
  };
}

const AnomalyOptions = z
  .object({
    metric: z.string().min(1).max(40).default("requests"),
    /** Usage is summed per bucket of this length. Default 1 min. */
    bucketMs: z.number().int().min(1000).max(24 * 3600_000).default(60_000),
    /** Weight of the newest bucket in the moving mean and variance. Default 0.1. */
    alpha: z.number().gt(0).lt(1).default(0.1),
    /** Flag usage above mean + k·σ. Default 4. */
    k: z.number().gt(0).max(100).default(4),
    /** σ is taken as at least this fraction of the mean, so a very regular user is not flagged for a small rise. Default 0.25. */
    minStdDevRatio: z.number().min(0).max(10).default(0.25),
    /** Active buckets to learn from before anything is flagged. Default 10. */
    minBuckets: z.number().int().min(1).max(10_000).default(10),
    /** Usage at or below this is never flagged, whatever the baseline. Default 0. */
    minAmount: z.number().min(0).default(0),
    /**
     * An absolute ceiling: a bucket above it is flagged whatever the baseline, even while
     * learning. Default none.
     */
    maxAmount: z.number().positive().optional(),
    /**
     * Rate-of-growth rule: a bucket above `growthFactor` × the growth-limited level is flagged.
     * The level follows the learned mean, but rises at most by this factor per hour of wall time.
     * Default 2 (a subject's normal level may double each hour); `Infinity` turns the rule off.
     */
    maxGrowthPerHour: z.union([z.number().gt(1), z.custom<number>((v) => v === Number.POSITIVE_INFINITY)]).default(2),
    /** How far above the growth-limited level a bucket may go. Default 4. */
    growthFactor: z.number().gt(1).default(4),
    /** Refuse further usage in a flagged bucket. Default false (only report). */
    block: z.boolean().default(false),
    onAnomaly: functionOption<(event: AnomalyEvent) => void | Promise<void>>().optional(),
    /** Where baselines live. Default in memory; `createKyselyAnomalyStateStore` shares them across processes. */
    store: z.custom<AnomalyStateStore>((v) => typeof (v as AnomalyStateStore)?.update === "function", "store must implement AnomalyStateStore").optional(),
    now: clockOption(),
  })
  .strict();
export type AnomalyDetectorOptions = z.input<typeof AnomalyOptions>;

export interface AnomalyDetector {
  readonly metric: string;
  readonly blocks: boolean;
  /** Adds `amount` of usage for `subject` now and says whether the bucket is anomalous. */
  observe(subject: string, amount: number): Promise<AnomalyVerdict>;
  /** The verdict for the current bucket without adding usage. */
  check(subject: string): Promise<AnomalyVerdict>;
}

/**
 * A per-subject usage-rate detector. Usage is summed per bucket; the baseline is an
 * exponentially weighted mean and variance over the subject's *active* buckets (idle time
 * does not drag the baseline to zero). A bucket whose usage passes
 * `max(minAmount, mean + k·max(σ, minStdDevRatio·mean))` is flagged: `onAnomaly` is called
 * once for it and, with `block`, further usage in it is refused. A flagged bucket is learned
 * from only up to the threshold, so a sustained attack cannot quickly teach the baseline.
 *
 * A slow ramp inflates σ and so the statistical threshold; two more rules stop it. The
 * growth rule keeps a level that follows the mean but rises at most `maxGrowthPerHour` per hour,
 * and flags a bucket above `growthFactor` times that level (a ramp of +20% a minute from 10/min is
 * flagged within about 10 minutes with the defaults). `maxAmount` is an absolute ceiling that
 * holds from the first request.
 *
 * @example
 * const spend = createAnomalyDetector({ metric: "spend", bucketMs: 3_600_000, block: true, onAnomaly: (e) => audit.record(e) });
 * await spend.observe(`user:${userId}`, chargedMicros);
 */
export function createAnomalyDetector(input: AnomalyDetectorOptions = {}): AnomalyDetector {
  const o = parseOptions(AnomalyOptions, input, "anomaly detector");
  const store = o.store ?? createMemoryAnomalyStateStore();
  const ceiling = o.maxAmount ?? Number.POSITIVE_INFINITY;
  const perBucketGrowth = Number.isFinite(o.maxGrowthPerHour) ? o.maxGrowthPerHour ** (o.bucketMs / 3_600_000) : Number.POSITIVE_INFINITY;
  /**
   * The lowest of: the statistical threshold (mean + k·σ, which a ramp inflates through σ), the
   * growth threshold (growthFactor × growth-limited level) and the absolute ceiling; never below
   * `minAmount` unless the ceiling is lower.
   */
  const thresholdOf = (s: AnomalyState) => {
    const statistical = s.mean + o.k * Math.max(Math.sqrt(s.variance), o.minStdDevRatio * s.mean);
    const growth = Number.isFinite(o.growthFactor) ? o.growthFactor * (s.reference ?? s.mean) : Number.POSITIVE_INFINITY;
    return Math.min(ceiling, Math.max(o.minAmount, Math.min(statistical, growth)));
  };

  async function observe(subject: string, amount: number): Promise<AnomalyVerdict> {
    if (typeof amount !== "number" || !Number.isFinite(amount) || amount < 0) throw new AnomalyInputError(`Usage amount must be a non-negative finite number, got ${String(amount)}`);
    if (typeof subject !== "string" || subject.length === 0 || subject.length > 500 || subject.includes("\u0000")) throw new AnomalyInputError("A usage subject must be a non-empty string without NUL");
    const at = o.now();
    const bucketStart = Math.floor(at.getTime() / o.bucketMs) * o.bucketMs;
    let event: AnomalyEvent | undefined;
    let learning = true;
    let threshold: number | undefined;
    const state = await store.update(`${o.metric}:${subject}`, (previous) => {
      const state: AnomalyState = { ...(previous ?? { bucketStart, current: 0, mean: 0, variance: 0, buckets: 0, flagged: false }) };
      event = undefined;
      if (bucketStart > state.bucketStart) {
        if (state.current > 0) {
          const x = state.flagged ? Math.min(state.current, thresholdOf(state)) : state.current;
          const elapsed = Math.max(1, (bucketStart - state.bucketStart) / o.bucketMs);
          if (state.buckets === 0) {
            state.mean = x;
            state.variance = 0;
            state.reference = x;
          } else {
            const diff = x - state.mean;
            const step = o.alpha * diff;
            state.mean += step;
            state.variance = (1 - o.alpha) * (state.variance + diff * step);
            // Down at once, up no faster than the allowed growth over the time that passed.
            state.reference = Math.min(state.mean, (state.reference ?? state.mean) * perBucketGrowth ** elapsed);
          }
          state.buckets += 1;
        }
        state.bucketStart = bucketStart;
        state.current = 0;
        state.flagged = false;
      }
      state.current += amount;
      learning = state.buckets < o.minBuckets;
      // The ceiling holds from the first request; the learned rules once there is a baseline.
      threshold = learning ? (o.maxAmount === undefined ? undefined : o.maxAmount) : thresholdOf(state);
      if (threshold !== undefined && state.current > threshold && !state.flagged) {
        state.flagged = true;
        event = {
          type: "usage.anomaly",
          subject,
          metric: o.metric,
          bucketStart: new Date(bucketStart),
          bucketMs: o.bucketMs,
          observed: state.current,
          threshold,
          baseline: { mean: state.mean, stdDev: Math.sqrt(state.variance), buckets: state.buckets },
          blocked: o.block,
          at,
        };
      }
      return state;
    });
    if (event) await o.onAnomaly?.(event);
    return { anomalous: state.flagged, learning, observed: state.current, threshold, bucketEnd: new Date(bucketStart + o.bucketMs) };
  }

  return { metric: o.metric, blocks: o.block, observe, check: (subject) => observe(subject, 0) };
}

/** A usage amount or subject the detector cannot count (negative, NaN, empty, NUL). Renders as 400. */
export class AnomalyInputError extends GatewayError {
  constructor(message: string) {
    super("invalid_request", message);
    this.name = "AnomalyInputError";
  }
}

/** A flagged subject was refused. Renders as 429 `usage_anomaly` with `Retry-After` (the end of the bucket). */
export class UsageAnomalyError extends GatewayError {
  constructor(metric: string, verdict: AnomalyVerdict, now: Date) {
    const retryAfter = Math.max(1, Math.ceil((verdict.bucketEnd.getTime() - now.getTime()) / 1000));
    super("usage_anomaly", `Unusually high ${metric} for this account; further use is paused for ${retryAfter} s`, {
      details: { metric, observed: verdict.observed, threshold: verdict.threshold, retryAfterSeconds: retryAfter },
      retryAfterSeconds: retryAfter,
    });
    this.name = "UsageAnomalyError";
  }
}

type Ctx = ParameterizedContext;

const GuardOptions = z
  .object({
    detector: z.custom<AnomalyDetector>((v) => typeof (v as AnomalyDetector)?.observe === "function", "detector must come from createAnomalyDetector"),
    /** Whose usage this is. Default the principal's user; requests without one pass. */
    subject: functionOption<(ctx: Ctx) => string | undefined>().optional(),
    /** Usage this request adds. Default 1 (request rate); 0 only checks a flag set elsewhere, e.g. by spend. */
    amount: functionOption<(ctx: Ctx) => number>().optional(),
    now: clockOption(),
  })
  .strict();
export type AnomalyGuardOptions = z.input<typeof GuardOptions>;

/**
 * Feeds each request into an anomaly detector and, when the detector blocks and the caller
 * is flagged, refuses with 429 `usage_anomaly`.
 *
 * @example
 * const requests = createAnomalyDetector({ block: true, onAnomaly: (e) => log.warn(e) });
 * router.use(authenticate({ service }), anomalyGuard({ detector: requests }));
 */
export function anomalyGuard(input: AnomalyGuardOptions): Middleware {
  const { detector, subject, amount, now } = parseOptions(GuardOptions, input, "anomalyGuard");
  return async (ctx, next) => {
    const who = subject ? subject(ctx) : ctx.state.principal ? `user:${ctx.state.principal.userId}` : undefined;
    if (who === undefined) return next();
    const verdict = await detector.observe(who, amount ? amount(ctx) : 1);
    if (verdict.anomalous && detector.blocks) throw new UsageAnomalyError(detector.metric, verdict, now());
    await next();
  };
}
