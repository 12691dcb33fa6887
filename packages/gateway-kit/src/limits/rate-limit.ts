import type { Middleware, ParameterizedContext } from "koa";
import * as z from "zod";
import { ipLimitKey, requestIp } from "../http/index.js";
import { Ipv6PrefixLength } from "../http/internal.js";
import { HttpError } from "../http-error.js";
import { clockOption, functionOption, parseOptions } from "../options.js";
import type { RateLimitResult, RateLimitStore } from "./rate-limit-store.js";
import { ConfigError } from "../errors.js";

/** The tightest rate limit a request met, on `ctx.state.rateLimit`. */
export interface RateLimitState extends RateLimitResult {
  name: string;
  windowMs: number;
}

declare module "koa" {
  interface DefaultState {
    rateLimit?: RateLimitState;
  }
}

type Ctx = ParameterizedContext;

const RateLimitOptions = z
  .object({
    store: z.custom<RateLimitStore>((v) => typeof (v as RateLimitStore)?.consume === "function", "store must implement RateLimitStore"),
    /** Requests (tokens) a caller may burst; also how many come back per window. */
    limit: z.number().int().min(1).max(1_000_000),
    windowMs: z.number().int().min(1000).max(7 * 24 * 3600_000),
    /**
     * Whose bucket a request takes from. `user`: the principal's user (anonymous requests by
     * IP); `api_key`: the API key (requests without one pass untouched); `ip`; or a function
     * returning a key, or `undefined` to skip.
     */
    by: z.union([z.enum(["user", "api_key", "ip"]), functionOption<(ctx: Ctx) => string | undefined>()]).default("user"),
    /** How many leading bits of an IPv6 address name one client for `ip` keys (32–128). Default 64. */
    ipv6PrefixLength: Ipv6PrefixLength,
    /** Tells limits apart in keys and in `RateLimit-Policy`. Default `by` (or `custom`). */
    name: z.string().regex(/^[a-z0-9_-]{1,40}$/).optional(),
    /** Tokens a request takes. Default 1. */
    cost: functionOption<(ctx: Ctx) => number>().optional(),
    now: clockOption(),
  })
  .strict();
export type RateLimitOptions = z.input<typeof RateLimitOptions>;

function keyOf(options: Pick<z.output<typeof RateLimitOptions>, "by" | "ipv6PrefixLength">, ctx: Ctx): string | undefined {
  const { by } = options;
  const principal = ctx.state.principal;
  if (typeof by === "function") return by(ctx);
  // Addresses come from requestIp() (trusted hops only, validated) and count IPv6 by its prefix.
  const ip = () => `ip:${ipLimitKey(requestIp(ctx), options.ipv6PrefixLength)}`;
  switch (by) {
    case "api_key":
      return principal?.apiKeyId ? `key:${principal.apiKeyId}` : undefined;
    case "user":
      return principal ? `user:${principal.userId}` : ip();
    case "ip":
      return ip();
  }
}

/**
 * Rate-limits requests with a token bucket per user, API key or IP. Every limited response
 * carries `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (seconds until the
 * bucket is full) and `RateLimit-Policy` (`<limit>;w=<window seconds>`); with several limits
 * stacked, the headers describe the tightest. A refused request gets 429 `rate_limited` with
 * `Retry-After`. Mount it after `authenticate` so it can see the principal.
 *
 * @example
 * const store = createKyselyRateLimitStore(db);
 * router.use(authenticate({ service }));
 * router.use(rateLimit({ store, limit: 120, windowMs: 60_000, by: "user" }));
 * router.use(rateLimit({ store, limit: 30, windowMs: 60_000, by: "api_key" }));
 */
export function rateLimit(input: RateLimitOptions): Middleware {
  const options = parseOptions(RateLimitOptions, input, "rateLimit");
  const name = options.name ?? (typeof options.by === "string" ? options.by : "custom");
  const rule = { limit: options.limit, windowMs: options.windowMs };
  const windowSeconds = Math.ceil(options.windowMs / 1000);
  return async (ctx, next) => {
    const key = keyOf(options, ctx);
    if (key === undefined) return next();
    const cost = options.cost ? options.cost(ctx) : 1;
    if (!Number.isFinite(cost) || cost < 0) throw new ConfigError(`rateLimit cost must be a non-negative number, got ${cost}`);
    const result = await options.store.consume(`${name}:${key}`, rule, cost, options.now().getTime());
    const headers = {
      "RateLimit-Limit": String(result.limit),
      "RateLimit-Remaining": String(result.remaining),
      "RateLimit-Reset": String(Math.ceil(result.resetMs / 1000)),
      "RateLimit-Policy": `${result.limit};w=${windowSeconds}`,
    };
    const previous = ctx.state.rateLimit;
    if (!previous || !result.allowed || result.remaining < previous.remaining) {
      ctx.state.rateLimit = { ...result, name, windowMs: options.windowMs };
      ctx.set(headers);
    }
    if (!result.allowed) {
      const retryAfter = Math.max(1, Math.ceil(result.retryAfterMs / 1000));
      throw new HttpError(
        429,
        "rate_limited",
        `Rate limit of ${result.limit} requests per ${windowSeconds} s exceeded (${name}); retry in ${retryAfter} s`,
        { limit: result.limit, windowSeconds, retryAfterSeconds: retryAfter, scope: name },
        { "Retry-After": String(retryAfter), ...headers, "RateLimit-Remaining": "0" },
      );
    }
    await next();
  };
}
