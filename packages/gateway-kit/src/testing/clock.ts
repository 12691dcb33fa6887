/**
 * A clock tests move by hand. Pass `clock.now` wherever a gateway-kit factory takes a
 * `now: () => Date` option, then `advance()` it to expire leases, sessions, buckets or periods.
 *
 * @example
 * const clock = new TestClock(Date.UTC(2026, 0, 1));
 * const slots = createRunSlots({ store, limits: { user: 1 }, now: clock.now });
 * clock.advance(60_000);
 */
export class TestClock {
  /** The current time in epoch milliseconds (default: when the clock was made). */
  constructor(public ms: number = Date.now()) {}
  now = (): Date => new Date(this.ms);
  advance(ms: number): void {
    this.ms += ms;
  }
}
