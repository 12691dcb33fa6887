import { AuthError, ConfigError } from "../errors.js";
import * as z from "zod";
import { ipLimitKey } from "../http/index.js";
import { Ipv6PrefixLength } from "../http/internal.js";
import type { LoginAttemptStore } from "./stores.js";

export const LoginLimiterOptions = z
  .object({
    /** Failures per account before lockouts start. Default 5. */
    accountFailures: z.number().int().min(1).max(1000).default(5),
    /** Failures per IP before lockouts start. Default 20 (an office shares one IP). */
    ipFailures: z.number().int().min(1).max(100_000).default(20),
    /** First lockout; each further failure doubles it. Default 1 s. */
    baseLockoutMs: z.number().int().min(1).default(1000),
    /** Longest lockout. Default 15 min. */
    maxLockoutMs: z.number().int().min(1).default(15 * 60_000),
    /** Failures older than this are forgotten. Default 1 h. */
    resetAfterMs: z.number().int().min(1).default(60 * 60_000),
    /**
     * How many leading bits of an IPv6 address name one client (32–128). Default 64: one
     * subscriber holds at least a /64; set 56 or 48 where providers hand out those.
     */
    ipv6PrefixLength: Ipv6PrefixLength,
  })
  .strict()
  .refine((o) => o.maxLockoutMs >= o.baseLockoutMs, { message: "maxLockoutMs must be at least baseLockoutMs" });
export type LoginLimiterOptions = z.input<typeof LoginLimiterOptions>;

/** What a login attempt is counted against. */
export interface LoginSubject {
  /** The normalised account identifier (email). */
  account: string;
  /** The client's address; IPv6 addresses are counted by their prefix, /64 by default (see `ipLimitKey`). */
  ip: string | undefined;
}

/**
 * Counts credential attempts per account and per IP and locks them out exponentially. Every
 * attempt is counted as a failure *before* its credential is checked (`begin`), atomically, so
 * concurrent guesses cannot slip past a lockout; a right credential takes its count back
 * (`release`) and a completed login clears the account (`reset`).
 */
export interface LoginLimiter {
  /** Throws 429 `too_many_attempts` with `Retry-After` while the account or the IP is locked (reads only). */
  check(subject: LoginSubject): Promise<void>;
  /** Counts one attempt against the account and the IP; throws 429 while either is locked. */
  begin(subject: LoginSubject): Promise<void>;
  /** The credential of a `begin`-counted attempt was right: takes that count back from the account and the IP. */
  release(subject: LoginSubject): Promise<void>;
  /**
   * A login completed, every factor included: clears the account's counter and takes back the
   * IP's count (the IP keeps earlier failures, so one good login does not launder an attacker's IP).
   */
  reset(subject: LoginSubject): Promise<void>;
}

function tooManyAttempts(untilMs: number, atMs: number): AuthError {
  const retryAfter = Math.max(1, Math.ceil((untilMs - atMs) / 1000));
  return new AuthError("too_many_attempts", "Too many failed login attempts; try again later", {
    details: { retryAfterSeconds: retryAfter },
    retryAfterSeconds: retryAfter,
  });
}

/**
 * A brute-force limiter for logins and every other password or second-factor check: after
 * `accountFailures` failures for one account (or `ipFailures` from one IP) each further failure
 * locks it for `baseLockoutMs * 2^n`, capped at `maxLockoutMs`. Unknown accounts are counted
 * like known ones, so lockouts reveal nothing.
 *
 * @example
 * const limiter = createLoginLimiter(stores.loginAttempts, { accountFailures: 5 });
 * await limiter.begin({ account: email, ip });
 * if (!(await passwordMatches())) throw new AuthError("invalid_credentials", "…"); // stays counted
 * await limiter.reset({ account: email, ip });
 */
export function createLoginLimiter(store: LoginAttemptStore, options: LoginLimiterOptions = {}, now: () => Date = () => new Date()): LoginLimiter {
  const parsed = LoginLimiterOptions.safeParse(options);
  if (!parsed.success) throw new ConfigError(`Invalid login limiter options: ${z.prettifyError(parsed.error)}`);
  const config = parsed.data;
  const keysOf = (subject: LoginSubject) => [
    { key: `account:${subject.account}`, threshold: config.accountFailures },
    ...(subject.ip ? [{ key: `ip:${ipLimitKey(subject.ip, config.ipv6PrefixLength)}`, threshold: config.ipFailures }] : []),
  ];
  const lockoutFor = (threshold: number) => (failures: number) =>
    failures < threshold ? 0 : Math.min(config.baseLockoutMs * 2 ** Math.min(failures - threshold, 30), config.maxLockoutMs);
  return {
    async check(subject) {
      const at = now().getTime();
      let until = 0;
      for (const { key } of keysOf(subject)) {
        const state = await store.get(key);
        const lockedUntil = state?.lockedUntil?.getTime() ?? 0;
        if (lockedUntil > at) until = Math.max(until, lockedUntil);
      }
      if (until > 0) throw tooManyAttempts(until, at);
    },
    async begin(subject) {
      const at = now();
      const resetBefore = new Date(at.getTime() - config.resetAfterMs);
      // The IP first: a locked-out address adds nothing to the account it aims at.
      for (const { key, threshold } of keysOf(subject).reverse()) {
        const claimed = await store.claim(key, at, { resetBefore, lockoutMs: lockoutFor(threshold) });
        if (!claimed.allowed) throw tooManyAttempts(claimed.lockedUntil.getTime(), at.getTime());
      }
    },
    async release(subject) {
      for (const { key, threshold } of keysOf(subject)) await store.release(key, threshold);
    },
    async reset(subject) {
      const [account, ...ip] = keysOf(subject);
      await store.clear(account!.key);
      for (const { key, threshold } of ip) await store.release(key, threshold);
    },
  };
}
