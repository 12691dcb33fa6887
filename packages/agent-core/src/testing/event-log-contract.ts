import type { KeenEvent } from "../events.js";
import { PROTOCOL_VERSION } from "../events.js";
import type { EventLog } from "../run/event-log.js";

/** The parts of a test framework the contract uses (vitest's, or any with the same shape). */
export interface ContractTestApi {
  describe: (name: string, body: () => void) => void;
  it: (name: string, body: () => Promise<void> | void, timeout?: number) => void;
  expect: (value: unknown) => any;
}

/** A valid event with the given seq, for filling a log under test. */
export function sampleEvent(seq: number, runId = "run_contract"): KeenEvent {
  return { protocol: PROTOCOL_VERSION, runId, agentId: "root", seq, at: new Date(0).toISOString(), type: "model.text", text: `event ${seq} — ünïcode ✓` };
}

/**
 * The behaviour every `EventLog` must have. `create` returns a fresh, empty log; `reopen`, when
 * the log is durable, opens the same store again (as a resumed process would).
 *
 * @example
 * import { describe, it, expect } from "vitest";
 * runEventLogContract("postgres", { create: () => PgEventLog.create(pool, runId) }, { describe, it, expect });
 */
export function runEventLogContract(
  name: string,
  factory: { create: () => Promise<EventLog> | EventLog; reopen?: (log: EventLog) => Promise<EventLog> | EventLog; capacity?: number },
  { describe, it, expect }: ContractTestApi,
): void {
  describe(`EventLog contract: ${name}`, () => {
    it("is empty at first: lastSeq -1, nothing to read", async () => {
      const log = await factory.create();
      expect(await log.lastSeq()).toBe(-1);
      expect(await log.readAfter(-1, 10)).toEqual([]);
    });

    it("returns what was appended, in order, after any seq, at most `limit`", async () => {
      const log = await factory.create();
      for (let seq = 0; seq < 50; seq++) await log.append(sampleEvent(seq));
      expect(await log.lastSeq()).toBe(49);
      expect((await log.readAfter(-1, 100)).map((e) => e.seq)).toEqual(Array.from({ length: 50 }, (_, i) => i));
      expect((await log.readAfter(9, 5)).map((e) => e.seq)).toEqual([10, 11, 12, 13, 14]);
      expect(await log.readAfter(49, 5)).toEqual([]);
      expect((await log.readAfter(47, 5))[1]).toEqual(sampleEvent(49));
    });

    it("starts at any seq (a resumed run) and keeps it", async () => {
      const log = await factory.create();
      for (let seq = 500; seq < 505; seq++) await log.append(sampleEvent(seq));
      expect(await log.lastSeq()).toBe(504);
      expect((await log.readAfter(501, 10)).map((e) => e.seq)).toEqual([502, 503, 504]);
    });

    if (factory.capacity !== undefined) {
      const capacity = factory.capacity;
      it("holds at most its capacity and says so (code events_evicted) when asked for a dropped event", async () => {
        const log = await factory.create();
        for (let seq = 0; seq < capacity * 3; seq++) await log.append(sampleEvent(seq));
        expect(await log.lastSeq()).toBe(capacity * 3 - 1);
        let caught: any;
        try {
          await log.readAfter(-1, 10);
        } catch (error) {
          caught = error;
        }
        expect(caught?.code).toBe("events_evicted");
        expect((await log.readAfter(capacity * 3 - 3, 10)).map((e) => e.seq)).toEqual([capacity * 3 - 2, capacity * 3 - 1]);
      });
    }

    if (factory.reopen) {
      const reopen = factory.reopen;
      it("is durable: a reopened log has every event and continues after the last seq", async () => {
        const log = await factory.create();
        for (let seq = 0; seq < 20; seq++) await log.append(sampleEvent(seq));
        const again = await reopen(log);
        expect(await again.lastSeq()).toBe(19);
        expect((await again.readAfter(17, 10)).map((e) => e.seq)).toEqual([18, 19]);
        await again.append(sampleEvent(20));
        expect((await again.readAfter(18, 10)).map((e) => e.seq)).toEqual([19, 20]);
      });
    }
  });
}
