import type { EventBus, RunNotice, StoredEvent } from "./event-bus.js";
import { isTerminal, type RunEventLog } from "./event-log.js";

export interface FollowOptions {
  /** Deliver events with seq greater than this. */
  after: number;
  /** Events held in memory for this follower; past it the follower reads from the table. */
  buffer: number;
  /** Page size when reading from the table. */
  pageSize?: number;
  /** Re-check the table at least this often even without a notice (a lost NOTIFY only delays). */
  pollMs?: number;
  signal?: AbortSignal;
}

/**
 * A run's events after a cursor, in order, with no gap and no repeat: first replayed from the
 * table, then live. Live events arrive in memory while the follower keeps up; a follower that
 * falls `buffer` events behind (or misses one) drops its buffer and pages from the table, so a
 * slow client costs only its own reads. Ends after the last event of a finished run.
 *
 * @example
 * for await (const event of followRun(log, bus, runId, { after: 0, buffer: 1000 })) send(event);
 */
export async function* followRun(log: RunEventLog, bus: EventBus, runId: string, options: FollowOptions): AsyncGenerator<StoredEvent> {
  const pageSize = options.pageSize ?? 500;
  const pollMs = options.pollMs ?? 2_000;
  let cursor = options.after;
  let buffered: StoredEvent[] = [];
  let dirty = true;
  let ended = false;
  let wake: (() => void) | undefined;

  const onNotice = (notice: RunNotice) => {
    if (notice.ended) ended = true;
    const last = buffered.at(-1)?.seq ?? cursor;
    let gap = notice.lastSeq > last && !notice.events;
    for (const event of notice.events ?? []) {
      if (gap || event.seq <= (buffered.at(-1)?.seq ?? cursor)) continue;
      if (event.seq === (buffered.at(-1)?.seq ?? cursor) + 1 && buffered.length < options.buffer) buffered.push(event);
      else gap = true;
    }
    if (gap) {
      // Behind or out of step: forget the buffer and catch up from the table.
      buffered = [];
      dirty = true;
    }
    wake?.();
  };
  const unsubscribe = bus.subscribe(runId, onNotice);
  const onAbort = () => wake?.();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  // Set when a wait timed out: the run's state is read again (a lost `ended` notice only delays).
  let checkState = true;
  try {
    while (!options.signal?.aborted) {
      if (buffered.length > 0 && !dirty) {
        const event = buffered.shift()!;
        if (event.seq !== cursor + 1) {
          buffered = [];
          dirty = true;
          continue;
        }
        cursor = event.seq;
        yield event;
        continue;
      }
      if (dirty) {
        // Catch up from the table; notices that arrive meanwhile land in the buffer or set dirty again.
        dirty = false;
        buffered = [];
        const page = await log.page(runId, cursor, pageSize);
        for (const event of page) {
          if (options.signal?.aborted) return;
          cursor = event.seq;
          yield event;
        }
        if (page.length === pageSize) dirty = true;
        continue;
      }
      if (ended || checkState) {
        checkState = false;
        // A finished run wrote every event before its state changed: one last page, then the end.
        const status = ended ? "ended" : await log.status(runId);
        if (status === undefined) return;
        if (status === "ended" || isTerminal(status)) {
          const rest = await log.page(runId, cursor, pageSize);
          if (rest.length === 0) return;
          for (const event of rest) {
            if (options.signal?.aborted) return;
            cursor = event.seq;
            yield event;
          }
          buffered = [];
          dirty = true;
          continue;
        }
        if (buffered.length > 0 || dirty) continue;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          dirty = true;
          checkState = true;
          resolve();
        }, pollMs);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
  } finally {
    unsubscribe();
    options.signal?.removeEventListener("abort", onAbort);
  }
}
