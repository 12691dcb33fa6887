import { z } from "zod";
import { HttpError } from "../http-error.js";
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
  })
  .strict()
  .refine((o) => o.maxLockoutMs >= o.baseLockoutMs, { message: "maxLockoutMs must be at least baseLockoutMs" });
export type LoginLimiterOptions = z.input<typeof LoginLimiterOptions>;

/** What a login attempt is counted against. */
export interface LoginSubject {
  /** The normalised account identifier (email). */
  account: string;
  ip: string | undefined;
}

/** Counts login failures per account and per IP and locks them out exponentially. */
export interface LoginLimiter {
  /** Throws 429 `too_many_attempts` with `Retry-After` while the account or the IP is locked. */
  check(subject: LoginSubject): Promise<void>;
  recordFailure(subject: LoginSubject): Promise<void>;
  /** Clears the account's counter (the IP's stays, so one good login does not launder an attacker's IP). */
  recordSuccess(subject: LoginSubject): Promise<void>;
}

/**
 * A brute-force limiter for logins: after `accountFailures` failures for one account (or
 * `ipFailures` from one IP) each further failure locks it for `baseLockoutMs * 2^n`, capped at
 * `maxLockoutMs`. Unknown accounts are counted like known ones, so lockouts reveal nothing.
 *
 * @example
 * const limiter = createLoginLimiter(stores.loginAttempts, { accountFailures: 5 });
 * await limiter.check({ account: email, ip: ctx.ip });
 */
export function createLoginLimiter(store: LoginAttemptStore, options: LoginLimiterOptions = {}, now: () => Date = () => new Date()): LoginLimiter {
  const parsed = LoginLimiterOptions.safeParse(options);
  if (!parsed.success) throw new TypeError(`Invalid login limiter options: ${z.prettifyError(parsed.error)}`);
  const config = parsed.data;
  const keysOf = (subject: LoginSubject) => [
    { key: `account:${subject.account}`, threshold: config.accountFailures },
    ...(subject.ip ? [{ key: `ip:${subject.ip}`, threshold: config.ipFailures }] : []),
  ];
  return {
    async check(subject) {
      const at = now().getTime();
      let until = 0;
      for (const { key } of keysOf(subject)) {
        const state = await store.get(key);
        const lockedUntil = state?.lockedUntil?.getTime() ?? 0;
        if (lockedUntil > at) until = Math.max(until, lockedUntil);
      }
      if (until > 0) {
        const retryAfter = Math.max(1, Math.ceil((until - at) / 1000));
        throw new HttpError(
          429,
          "too_many_attempts",
          "Too many failed login attempts; try again later",
          { retryAfterSeconds: retryAfter },
          { "Retry-After": String(retryAfter) },
        );
      }
    },
    async recordFailure(subject) {
      const at = now();
      const resetBefore = new Date(at.getTime() - config.resetAfterMs);
      for (const { key, threshold } of keysOf(subject)) {
        const failures = await store.recordFailure(key, at, resetBefore);
        if (failures >= threshold) {
          const exponent = Math.min(failures - threshold, 30);
          const lockout = Math.min(config.baseLockoutMs * 2 ** exponent, config.maxLockoutMs);
          await store.lock(key, new Date(at.getTime() + lockout));
        }
      }
    },
    async recordSuccess(subject) {
      await store.clear(`account:${subject.account}`);
    },
  };
}
