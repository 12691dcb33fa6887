import { describe, expect, it } from "vitest";
import { defaultRetryPolicy, mayRetry, parseRetryAfter, retryDelay, simulatedClock, sleep } from "./retry.js";

describe("retry policy", () => {
  const fixed = (r: number) => ({ ...defaultRetryPolicy, baseDelayMs: 100, maxDelayMs: 5_000, random: () => r });

  it("backs off exponentially with jitter between half and the full step", () => {
    expect([1, 2, 3, 4].map((a) => retryDelay(fixed(0), a))).toEqual([50, 100, 200, 400]);
    expect([1, 2, 3, 4].map((a) => retryDelay(fixed(1), a))).toEqual([100, 200, 400, 800]);
  });

  it("honours a longer retry-after but never waits past the cap", () => {
    expect(retryDelay(fixed(0), 1, 2_000)).toBe(2_000);
    expect(retryDelay(fixed(0), 1, 60_000)).toBe(5_000);
    expect(retryDelay(fixed(1), 20)).toBe(5_000);
  });

  it("parses retry-after in seconds, milliseconds and HTTP dates", () => {
    const headers = (entries: Record<string, string>) => new Headers(entries);
    expect(parseRetryAfter(headers({ "retry-after": "3" }))).toBe(3_000);
    expect(parseRetryAfter(headers({ "retry-after-ms": "250", "retry-after": "3" }))).toBe(250);
    const now = Date.parse("2026-01-01T00:00:00Z");
    expect(parseRetryAfter(headers({ "retry-after": "Thu, 01 Jan 2026 00:00:05 GMT" }), now)).toBe(5_000);
    expect(parseRetryAfter(headers({ "retry-after": "soon" }))).toBeUndefined();
    expect(parseRetryAfter(headers({}))).toBeUndefined();
  });

  it("stops sleeping as soon as the signal aborts", async () => {
    const controller = new AbortController();
    const started = Date.now();
    setTimeout(() => controller.abort(), 20);
    await expect(sleep(10_000, controller.signal)).rejects.toMatchObject({ code: "aborted" });
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it("by default keeps retrying for more than a minute, even at the shortest jitter, and stops within the total time", () => {
    const policy = { ...defaultRetryPolicy, random: () => 0 };
    let waited = 0;
    let attempt = 1;
    for (; mayRetry({ ...policy, now: () => waited }, attempt, retryDelay(policy, attempt), 0); attempt++) waited += retryDelay(policy, attempt);
    expect(waited).toBeGreaterThan(60_000);
    expect(waited).toBeLessThanOrEqual(policy.maxRetryTimeMs);
    expect(attempt - 1).toBe(policy.maxRetries);
  });

  it("refuses a retry past maxRetries or one whose wait would end past maxRetryTimeMs", () => {
    const clock = simulatedClock(1_000);
    const policy = { ...defaultRetryPolicy, maxRetries: 3, maxRetryTimeMs: 10_000, now: clock.now };
    expect(mayRetry(policy, 3, 100, 1_000)).toBe(true);
    expect(mayRetry(policy, 4, 100, 1_000)).toBe(false);
    expect(mayRetry(policy, 1, 10_000, 1_000)).toBe(true);
    expect(mayRetry(policy, 1, 10_001, 1_000)).toBe(false);
  });
});
