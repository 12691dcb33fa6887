import type { EventBus, RunNotice, StoredEvent } from "./event-bus.js";
import { isTerminal, type RunEventLog } from "./event-log.js";

export interface FollowOptions {
  /** Deliver events with seq greater than this. */
  after: number;
  /** Events held in memory for this follower; past it the follower reads from the table. */
  buffer: number;
  /** Page size when reading from the table. */
  pageSize?: number;
  /**
   * How often the run's shared reader re-checks the table and the run's state without a notice
   * (a lost NOTIFY only delays). Taken from the follower that opens the reader.
   */
  pollMs?: number;
  signal?: AbortSignal;
}

/** One follower as the hub sees it: a bounded buffer that is either fed by the hub or detached. */
interface Follower {
  /** Seq of the last event yielded to the consumer. */
  cursor: number;
  /** Seq of the last event yielded or buffered. */
  tail: number;
  buffer: StoredEvent[];
  /** Fed by the hub; false while the follower replays or catches up from the table itself. */
  joined: boolean;
  readonly capacity: number;
  wake(): void;
}

/**
 * The single reader of one run's new events inside one process. It learns of new rows from the
 * bus (in memory from a local writer, or as a NOTIFY from another process, which costs one table
 * read per notice however many follow) and from a slow safety poll, and hands every batch to
 * each joined follower's bounded buffer. A follower that would overflow, or sees a gap, is
 * detached: it pages from the table on its own and joins again once it has caught up.
 */
class RunHub {
  /** Highest seq the hub has handed out (every seq up to it is in the table); undefined until the first read. */
  last: number | undefined;
  /** The run is final and `last` is its final event. */
  ended = false;
  /** The run does not exist (any more). */
  gone = false;
  readonly followers = new Set<Follower>();
  readonly ready: Promise<void>;
  private markReady!: () => void;
  private endSeen = false;
  private pending = false;
  private pendingStatus = false;
  private reading: Promise<void> | undefined;
  private closed = false;
  private readonly unsubscribe: () => void;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly log: RunEventLog,
    bus: EventBus,
    private readonly runId: string,
    private readonly pageSize: number,
    pollMs: number,
  ) {
    this.ready = new Promise((resolve) => (this.markReady = resolve));
    this.unsubscribe = bus.subscribe(runId, (notice) => this.onNotice(notice));
    this.timer = setInterval(() => this.request(true), pollMs);
    this.timer.unref();
    this.request(true);
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    this.unsubscribe();
    this.markReady();
  }

  private onNotice(notice: RunNotice): void {
    if (this.closed || this.ended) return;
    if (notice.ended) this.endSeen = true;
    if (notice.events && this.last !== undefined) this.ingest(notice.events, false);
    // A notice without the events (another process), one past a gap, or the end: read the table once.
    if (notice.ended || this.last === undefined || notice.lastSeq > this.last) this.request(false);
  }

  /** Hands events after `last` to the followers; a batch that does not follow on is left to a table read. */
  private ingest(events: readonly StoredEvent[], fromTable: boolean): void {
    const fresh: StoredEvent[] = [];
    for (const event of events) {
      if (event.seq <= this.last!) continue;
      if (!fromTable && event.seq !== this.last! + 1) break;
      fresh.push(event);
      this.last = event.seq;
    }
    if (fresh.length === 0) return;
    for (const follower of this.followers) offer(follower, fresh);
  }

  private request(checkStatus: boolean): void {
    if (this.closed || this.ended) return;
    this.pending = true;
    this.pendingStatus ||= checkStatus;
    this.reading ??= this.readLoop().finally(() => (this.reading = undefined));
  }

  private async readLoop(): Promise<void> {
    try {
      while (this.pending && !this.closed) {
        this.pending = false;
        const checkStatus = this.pendingStatus || this.last === undefined;
        this.pendingStatus = false;
        if (checkStatus) {
          const status = await this.log.status(this.runId);
          if (status === undefined) {
            this.gone = true;
            this.finish();
            return;
          }
          if (isTerminal(status)) this.endSeen = true;
        }
        // A finished run wrote every event before its state changed: read to the end once more.
        const final = this.endSeen;
        if (this.last === undefined) {
          this.last = (await this.log.nextSeq(this.runId)) - 1;
          this.markReady();
        } else {
          for (;;) {
            const page = await this.log.page(this.runId, this.last, this.pageSize);
            this.ingest(page, true);
            if (page.length < this.pageSize) break;
          }
        }
        if (final) {
          this.ended = true;
          this.finish();
          return;
        }
      }
    } catch {
      // A failed read is retried by the next notice or poll; followers meanwhile wait.
      this.pending = false;
    }
  }

  private finish(): void {
    clearInterval(this.timer);
    this.markReady();
    for (const follower of this.followers) follower.wake();
  }
}

function offer(follower: Follower, events: readonly StoredEvent[]): void {
  if (!follower.joined) return;
  for (const event of events) {
    if (event.seq <= follower.tail) continue;
    if (event.seq !== follower.tail + 1 || follower.buffer.length >= follower.capacity) {
      // Behind or out of step: forget the buffer and catch up from the table.
      follower.joined = false;
      follower.buffer = [];
      follower.tail = follower.cursor;
      break;
    }
    follower.buffer.push(event);
    follower.tail = event.seq;
  }
  follower.wake();
}

const hubs = new WeakMap<EventBus, WeakMap<RunEventLog, Map<string, RunHub>>>();

function acquireHub(log: RunEventLog, bus: EventBus, runId: string, pageSize: number, pollMs: number): RunHub {
  let byLog = hubs.get(bus);
  if (!byLog) hubs.set(bus, (byLog = new WeakMap()));
  let byRun = byLog.get(log);
  if (!byRun) byLog.set(log, (byRun = new Map()));
  let hub = byRun.get(runId);
  if (!hub) byRun.set(runId, (hub = new RunHub(log, bus, runId, pageSize, pollMs)));
  return hub;
}

function releaseHub(log: RunEventLog, bus: EventBus, runId: string, hub: RunHub): void {
  if (hub.followers.size > 0) return;
  hub.close();
  const byRun = hubs.get(bus)?.get(log);
  if (byRun?.get(runId) === hub) byRun.delete(runId);
}

/**
 * A run's events after a cursor, in order, with no gap and no repeat: first replayed from the
 * table, then live. All followers of a run in one process share one reader of new events (see
 * `RunHub`), so N followers cost O(1) table reads per new batch; a follower that falls `buffer`
 * events behind drops its buffer and pages from the table by itself, so a slow client costs only
 * its own reads and never slows the others or the run. Ends after the last event of a finished run.
 *
 * @example
 * for await (const event of followRun(log, bus, runId, { after: 0, buffer: 1000 })) send(event);
 */
export async function* followRun(log: RunEventLog, bus: EventBus, runId: string, options: FollowOptions): AsyncGenerator<StoredEvent> {
  const pageSize = options.pageSize ?? 500;
  const hub = acquireHub(log, bus, runId, pageSize, options.pollMs ?? 2_000);
  let woken: (() => void) | undefined;
  const me: Follower = {
    cursor: options.after,
    tail: options.after,
    buffer: [],
    joined: false,
    capacity: Math.max(1, options.buffer),
    wake: () => woken?.(),
  };
  hub.followers.add(me);
  const sleep = () =>
    new Promise<void>((resolve) => {
      woken = resolve;
    }).finally(() => (woken = undefined));
  const onAbort = () => me.wake();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    while (!options.signal?.aborted) {
      if (me.buffer.length > 0) {
        const event = me.buffer.shift()!;
        me.cursor = event.seq;
        yield event;
        continue;
      }
      if (!me.joined) {
        // Replay, or catch up after falling behind: pages of our own from the table.
        const page = await log.page(runId, me.cursor, pageSize);
        for (const event of page) {
          if (options.signal?.aborted) return;
          me.cursor = event.seq;
          yield event;
        }
        if (page.length === pageSize) continue;
        if (hub.gone) return;
        if (hub.last === undefined) {
          await Promise.race([hub.ready, sleep()]);
          continue;
        }
        // Everything up to the hub's position is ours: from here on the hub feeds us.
        if (me.cursor < hub.last) continue;
        me.tail = me.cursor;
        me.joined = true;
        continue;
      }
      if (hub.gone || (hub.ended && me.cursor >= hub.last!)) return;
      await sleep();
    }
  } finally {
    hub.followers.delete(me);
    options.signal?.removeEventListener("abort", onAbort);
    releaseHub(log, bus, runId, hub);
  }
}
