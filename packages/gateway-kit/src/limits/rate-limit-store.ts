import { createHash } from "node:crypto";
import { GatewayError } from "../errors.js";
import { sql, type Kysely } from "kysely";
import type { LimitTables } from "./tables.js";

/**
 * A token bucket: holds at most `limit` tokens and refills `limit` tokens every `windowMs`,
 * evenly. A request takes `cost` tokens (usually 1), so bursts up to `limit` pass and the
 * sustained rate is `limit / windowMs`.
 */
export interface RateLimitRule {
  limit: number;
  windowMs: number;
}

/** The bucket after one `consume`. */
export interface RateLimitResult {
  allowed: boolean;
  limit: number;
  /** Whole tokens left after this request. */
  remaining: number;
  /** Until the bucket is full again. */
  resetMs: number;
  /** Until enough tokens for this request are back; 0 when allowed. */
  retryAfterMs: number;
}

/**
 * Where buckets live. `createMemoryRateLimitStore` serves one process;
 * `createKyselyRateLimitStore` shares buckets across processes through PostgreSQL.
 */
export interface RateLimitStore {
  /** Refills the bucket up to `nowMs`, then takes `cost` tokens if there are enough, atomically. */
  consume(key: string, rule: RateLimitRule, cost: number, nowMs: number): Promise<RateLimitResult>;
  /** Forgets buckets untouched since `beforeMs` (they would be full anyway); returns how many. */
  prune(beforeMs: number): Promise<number>;
}

/**
 * A `consume` call with a cost or rule a bucket cannot take (zero, negative, fractional, NaN or
 * infinite cost; a non-positive limit or window). Such a call would refill the bucket instead of
 * draining it, so it is refused before the store is touched.
 */
export class RateLimitInputError extends GatewayError {
  constructor(message: string) {
    super("invalid_request", message);
    this.name = "RateLimitInputError";
  }
}

/** Refuses costs and rules that are not positive safe integers (limit, cost) and a positive finite window. */
export function checkConsume(key: string, rule: RateLimitRule, cost: number, nowMs: number): void {
  if (typeof nowMs !== "number" || !Number.isFinite(nowMs)) throw new RateLimitInputError(`A rate-limit clock reading must be a finite number, got ${String(nowMs)}`);
  if (typeof key !== "string" || key.length === 0 || key.includes("\u0000")) throw new RateLimitInputError("A rate-limit key must be a non-empty string without NUL");
  if (typeof cost !== "number" || !Number.isSafeInteger(cost) || cost <= 0) throw new RateLimitInputError(`A rate-limit cost must be a positive whole number, got ${String(cost)}`);
  if (typeof rule?.limit !== "number" || !Number.isSafeInteger(rule.limit) || rule.limit <= 0) throw new RateLimitInputError(`A rate-limit limit must be a positive whole number, got ${String(rule?.limit)}`);
  if (typeof rule.windowMs !== "number" || !Number.isFinite(rule.windowMs) || rule.windowMs <= 0) throw new RateLimitInputError(`A rate-limit window must be a positive number of milliseconds, got ${String(rule.windowMs)}`);
}

/** Derives the public numbers from the bucket's tokens after a consume. */
export function bucketResult(tokens: number, allowed: boolean, rule: RateLimitRule, cost: number): RateLimitResult {
  const perMs = rule.limit / rule.windowMs;
  return {
    allowed,
    limit: rule.limit,
    remaining: Math.max(0, Math.floor(tokens + 1e-9)),
    resetMs: Math.max(0, Math.ceil((rule.limit - tokens) / perMs)),
    retryAfterMs: allowed ? 0 : Math.max(1, Math.ceil((Math.min(cost, rule.limit) - tokens) / perMs)),
  };
}

/**
 * An in-process token-bucket store. Buckets of different processes are independent; use the
 * PostgreSQL store when several processes serve the same users. Buckets that have refilled
 * completely are dropped as it goes, so memory follows the active callers.
 *
 * @example
 * app.use(rateLimit({ store: createMemoryRateLimitStore(), limit: 60, windowMs: 60_000 }));
 */
export function createMemoryRateLimitStore(): RateLimitStore {
  const buckets = new Map<string, { tokens: number; updatedMs: number; fullAtMs: number }>();
  let consumes = 0;
  return {
    async consume(key, rule, cost, nowMs) {
      checkConsume(key, rule, cost, nowMs);
      // Now and then, forget buckets that have refilled completely: they equal a fresh one.
      if (++consumes % 1000 === 0) {
        for (const [k, b] of buckets) if (b.fullAtMs <= nowMs) buckets.delete(k);
      }
      const perMs = rule.limit / rule.windowMs;
      const bucket = buckets.get(key);
      let tokens = rule.limit;
      let updatedMs = nowMs;
      if (bucket) {
        tokens = Math.min(rule.limit, bucket.tokens + Math.max(0, nowMs - bucket.updatedMs) * perMs);
        updatedMs = Math.max(bucket.updatedMs, nowMs);
      }
      const allowed = tokens >= cost;
      if (allowed) tokens -= cost;
      const result = bucketResult(tokens, allowed, rule, cost);
      buckets.set(key, { tokens, updatedMs, fullAtMs: updatedMs + result.resetMs });
      return result;
    },
    async prune(beforeMs) {
      let removed = 0;
      for (const [key, bucket] of buckets) {
        if (bucket.updatedMs < beforeMs) {
          buckets.delete(key);
          removed += 1;
        }
      }
      return removed;
    },
  };
}

/**
 * The key a bucket is stored under. A key can come from the client (an e-mail address, a header a
 * custom `by` reads): past a B-tree index row's size PostgreSQL refuses it, and unpaired UTF-16
 * surrogates are stored as U+FFFD, so two different keys would share a bucket. Such keys are
 * stored as a digest of their exact UTF-16 code units; ordinary keys stay readable (and erasable
 * by prefix).
 *
 * @example
 * await db.deleteFrom("rate_limit_buckets").where("key", "=", storedRateLimitKey(`login:${email}`)).execute();
 */
export function storedRateLimitKey(key: string): string {
  if (key.length <= 512 && !/\p{Cs}/u.test(key)) return key;
  return `#sha256:${createHash("sha256").update(key, "utf16le").digest("hex")}`;
}

/**
 * A token-bucket store in PostgreSQL (or PGlite): each `consume` is one `INSERT … ON CONFLICT
 * DO UPDATE` that refills and takes tokens under the row lock, so concurrent requests from any
 * number of processes never take more tokens than the bucket holds. Run `limitMigrations` first.
 *
 * @example
 * const store = createKyselyRateLimitStore(db);
 * app.use(rateLimit({ store, limit: 600, windowMs: 60_000, by: "api_key" }));
 */
export function createKyselyRateLimitStore(db: Kysely<any>): RateLimitStore {
  const kdb = db as Kysely<LimitTables>;
  return {
    async consume(key, rule, cost, nowMs) {
      checkConsume(key, rule, cost, nowMs);
      const limit = sql`${rule.limit}::float8`;
      const need = sql`${cost}::float8`;
      const now = sql`${Math.trunc(nowMs)}::int8`;
      const refilled = sql`least(${limit}, b.tokens + greatest(0, ${now} - b.updated_ms) * ${rule.limit / rule.windowMs}::float8)`;
      const result = await sql<{ tokens: number; allowed: boolean }>`
        insert into rate_limit_buckets as b (key, tokens, updated_ms, allowed)
        values (${storedRateLimitKey(key)}, case when ${need} <= ${limit} then ${limit} - ${need} else ${limit} end, ${now}, ${need} <= ${limit})
        on conflict (key) do update set
          tokens = case when ${refilled} >= ${need} then ${refilled} - ${need} else ${refilled} end,
          allowed = ${refilled} >= ${need},
          updated_ms = greatest(b.updated_ms, ${now})
        returning tokens, allowed`.execute(kdb);
      const row = result.rows[0]!;
      return bucketResult(Number(row.tokens), row.allowed, rule, cost);
    },
    async prune(beforeMs) {
      const result = await kdb.deleteFrom("rate_limit_buckets").where("updated_ms", "<", Math.trunc(beforeMs)).executeTakeFirst();
      return Number(result.numDeletedRows);
    },
  };
}
