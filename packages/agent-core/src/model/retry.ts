import { AbortedError } from "../errors.js";

/**
 * How a provider retries failed requests. The defaults ride out about a minute of overload:
 * ten retries whose waits add up to at least 75 s (before the server's `retry-after`), within
 * two minutes in all.
 */
export interface RetryPolicy {
  /** Retries after the first attempt. Default 10. */
  maxRetries: number;
  /**
   * Longest time in ms from the first attempt to the start of the last retry; a retry whose wait
   * would end later is not made. Default 120 000.
   */
  maxRetryTimeMs: number;
  /** First backoff step in ms; doubles per attempt. Default 500. */
  baseDelayMs: number;
  /** No single wait is longer than this, even when the server asks for more. Default 30 000. */
  maxDelayMs: number;
  /** Random source for jitter (tests may pin it). */
  random: () => number;
  /** Clock in ms for `maxRetryTimeMs` (tests may pass a simulated one with `sleep`). Default `Date.now`. */
  now: () => number;
  /** Waits between attempts; rejects with `AbortedError` when the signal fires. Default: a timer. */
  sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
}

export const defaultRetryPolicy: RetryPolicy = {
  maxRetries: 10,
  maxRetryTimeMs: 120_000,
  baseDelayMs: 500,
  maxDelayMs: 30_000,
  random: Math.random,
  now: () => Date.now(),
  sleep: (ms, signal) => sleep(ms, signal),
};

/**
 * Completes a partial policy with the defaults, refusing values that make no sense.
 * Returns an error message instead of throwing so each provider can raise its own typed error.
 */
export function resolveRetryPolicy(partial: Partial<RetryPolicy> = {}): RetryPolicy | string {
  const policy = { ...defaultRetryPolicy, ...partial };
  for (const key of ["maxRetries", "maxRetryTimeMs", "baseDelayMs", "maxDelayMs"] as const) {
    const value = policy[key];
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0) return `retry.${key} must be a non-negative number (got ${String(value)})`;
  }
  if (!Number.isInteger(policy.maxRetries)) return `retry.maxRetries must be an integer (got ${policy.maxRetries})`;
  return policy;
}

/**
 * Whether retry number `attempt` (1-based), after waiting `delayMs`, is still within the policy
 * for a request whose first attempt started at `startedAt` (on the policy's clock).
 */
export function mayRetry(policy: RetryPolicy, attempt: number, delayMs: number, startedAt: number): boolean {
  return attempt <= policy.maxRetries && policy.now() - startedAt + delayMs <= policy.maxRetryTimeMs;
}

/**
 * Delay before retry number `attempt` (1-based): exponential with "equal jitter"
 * (between half and all of the step), or the server's `retry-after` when it asks for longer.
 */
export function retryDelay(policy: Pick<RetryPolicy, "baseDelayMs" | "maxDelayMs" | "random">, attempt: number, retryAfterMs?: number): number {
  const step = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  const jittered = step / 2 + (step / 2) * policy.random();
  const wanted = retryAfterMs !== undefined ? Math.max(retryAfterMs, jittered) : jittered;
  return Math.round(Math.min(policy.maxDelayMs, wanted));
}

/** Reads `retry-after-ms` or `retry-after` (seconds or an HTTP date) into milliseconds. */
export function parseRetryAfter(headers: { get(name: string): string | null } | undefined, now = Date.now()): number | undefined {
  if (!headers) return undefined;
  const ms = headers.get("retry-after-ms");
  if (ms !== null && ms.trim() !== "" && Number.isFinite(Number(ms))) return Math.max(0, Number(ms));
  const value = headers.get("retry-after");
  if (value === null || value.trim() === "") return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** Waits `ms`, rejecting with `AbortedError` as soon as the signal fires. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new AbortedError());
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new AbortedError());
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * A simulated clock for testing retry policies: `sleep` moves time forward at once instead of
 * waiting, so a minute of backoff takes no real time.
 *
 * @example
 * const clock = simulatedClock();
 * const model = anthropic({ model: "m", retry: { now: clock.now, sleep: clock.sleep } });
 */
export function simulatedClock(start = 0): { now: () => number; sleep: (ms: number, signal?: AbortSignal) => Promise<void> } {
  let time = start;
  return {
    now: () => time,
    sleep: async (ms, signal) => {
      if (signal?.aborted) throw new AbortedError();
      time += ms;
    },
  };
}
