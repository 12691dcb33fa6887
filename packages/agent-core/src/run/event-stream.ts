import { EventEmitter } from "eventemitter3";
import { PROTOCOL_VERSION, type KeenEvent, type KeenEventInput, type KeenEventOf, type KeenEventType } from "../events.js";
import { MemoryEventLog, type EventLog } from "./event-log.js";

/** Events read from the log per step when an iterator is behind the in-memory window. */
const READ_BATCH = 256;

/**
 * Reading a run's events: what a `Run` exposes. Writing is internal to the run, so nothing a
 * consumer does here can end or break it.
 */
export interface EventReader extends AsyncIterable<KeenEvent> {
  readonly runId: string;
  /** The seq the next event will get. */
  readonly seq: number;
  readonly isClosed: boolean;
  /** The most recent events, at most the stream's window, in order. */
  readonly history: readonly KeenEvent[];
  /** Subscribes to one event type (or `*` for all), typed per type; returns the unsubscribe function. */
  on<T extends KeenEventType>(type: T, listener: (event: KeenEventOf<T>) => void): () => void;
  on(type: "*", listener: (event: KeenEvent) => void): () => void;
  /** Iterates from `fromSeq` (default: the first event of this process) until the run ends. */
  iterate(fromSeq?: number): AsyncGenerator<KeenEvent>;
}

export interface EventStreamOptions {
  /** The seq of the first event. Default 0. */
  startSeq?: number;
  now?: () => Date;
  /** Where events are kept. Default: a bounded `MemoryEventLog`. */
  log?: EventLog;
  /** Most events kept in memory for fast reading (older ones are read from the log). Default 1000. */
  window?: number;
}

type Listeners = { [K in KeenEventType]: [KeenEventOf<K>] } & { "*": [KeenEvent] };

/**
 * The ordered event stream of one run. `emit` stamps each event with the protocol version, the
 * run id, the next `seq` and a timestamp, appends it to the run's `EventLog` and notifies
 * subscribers (on eventemitter3). Every iterator reads at its own pace: recent events from the
 * in-memory window, older ones from the log, so memory stays flat however long the run.
 *
 * @example
 * const stream = new EventStream("run_1");
 * stream.on("tool.started", (e) => console.log(e.name));
 * for await (const event of stream) console.log(event.seq, event.type);
 */
export class EventStream implements EventReader {
  readonly runId: string;
  readonly log: EventLog;
  private readonly window: number;
  private readonly recent: KeenEvent[] = [];
  private readonly emitter = new EventEmitter<Listeners>();
  private wakeUps: Array<() => void> = [];
  private closed = false;
  private nextSeq: number;
  private firstSeq: number;
  private appending: Promise<void> = Promise.resolve();
  private appendFailure: unknown;
  private asyncLog = false;
  /** Set while a resumed stream reads where its log ends; default iterators start after it. */
  private continuing: Promise<void> | undefined;
  private readonly now: () => Date;

  constructor(runId: string, options: EventStreamOptions = {}) {
    this.runId = runId;
    this.nextSeq = this.firstSeq = options.startSeq ?? 0;
    this.now = options.now ?? (() => new Date());
    this.log = options.log ?? new MemoryEventLog();
    this.window = options.window ?? 1000;
  }

  get history(): readonly KeenEvent[] {
    return this.recent;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get seq(): number {
    return this.nextSeq;
  }

  /**
   * Continues numbering strictly after the log's last event, for a resumed run whose log
   * already holds events numbered after its snapshot. Call before the first `emit`.
   */
  continueAfterLog(): Promise<void> {
    this.continuing ??= (async () => {
      const last = await this.log.lastSeq();
      if (last + 1 > this.nextSeq) this.nextSeq = this.firstSeq = last + 1;
    })();
    return this.continuing;
  }

  emit(input: KeenEventInput): KeenEvent {
    if (this.closed) throw new Error(`Event stream of run ${this.runId} is closed`);
    const event = { ...input, protocol: PROTOCOL_VERSION, runId: this.runId, seq: this.nextSeq++, at: this.now().toISOString() } as KeenEvent;
    this.recent.push(event);
    if (this.recent.length > this.window) this.recent.shift();
    this.append(event);
    this.emitter.emit(event.type, event as never);
    this.emitter.emit("*", event);
    this.wake();
    return event;
  }

  on<T extends KeenEventType>(type: T, listener: (event: KeenEventOf<T>) => void): () => void;
  on(type: "*", listener: (event: KeenEvent) => void): () => void;
  on(type: KeenEventType | "*", listener: (event: any) => void): () => void {
    const safe = (event: KeenEvent) => {
      try {
        listener(event);
      } catch {
        // A faulty subscriber must not break the run or starve the other subscribers.
      }
    };
    this.emitter.on(type, safe as never);
    return () => void this.emitter.off(type, safe as never);
  }

  /** Ends every iterator once it has read the last event. */
  close(): void {
    this.closed = true;
    this.wake();
  }

  /** Resolves when every event is in the log; rejects with the first append failure. */
  async flush(): Promise<void> {
    await this.appending;
    if (this.appendFailure !== undefined) throw this.appendFailure;
  }

  async *iterate(fromSeq?: number): AsyncGenerator<KeenEvent> {
    // "This process's first event" is known once a resumed stream has read where its log ends.
    if (fromSeq === undefined) await this.continuing?.catch(() => {});
    let next = fromSeq ?? this.firstSeq;
    while (true) {
      const windowStart = this.recent[0]?.seq ?? this.nextSeq;
      if (next < windowStart) {
        // Behind the window: read from the log (after pending appends have landed).
        await this.appending;
        const batch = await this.log.readAfter(next - 1, Math.min(READ_BATCH, windowStart - next));
        if (batch.length === 0) next = windowStart;
        for (const event of batch) {
          yield event;
          next = event.seq + 1;
        }
        continue;
      }
      if (next < this.nextSeq) {
        yield this.recent[next - windowStart]!;
        next++;
        continue;
      }
      if (this.closed) return;
      await new Promise<void>((resolve) => this.wakeUps.push(resolve));
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<KeenEvent> {
    return this.iterate();
  }

  /** A read-only view for consumers: no `emit`, no `close`. */
  reader(): EventReader {
    const stream = this;
    return {
      runId: this.runId,
      get seq() {
        return stream.seq;
      },
      get isClosed() {
        return stream.isClosed;
      },
      get history() {
        return stream.history;
      },
      on: ((type: KeenEventType, listener: (event: KeenEvent) => void) => stream.on(type, listener)) as EventReader["on"],
      iterate: (fromSeq?: number) => stream.iterate(fromSeq),
      [Symbol.asyncIterator]: () => stream.iterate(),
    };
  }

  /** Appends in order: a synchronous log at once, an asynchronous one one append after another. */
  private append(event: KeenEvent): void {
    if (this.appendFailure !== undefined) return;
    const fail = (error: unknown) => {
      this.appendFailure ??= error;
    };
    if (this.asyncLog) {
      this.appending = this.appending.then(() => this.log.append(event)).catch(fail);
      return;
    }
    try {
      const result = this.log.append(event);
      if (result && typeof (result as Promise<void>).then === "function") {
        this.asyncLog = true;
        this.appending = Promise.resolve(result).catch(fail);
      }
    } catch (error) {
      fail(error);
    }
  }

  private wake(): void {
    const wakeUps = this.wakeUps;
    this.wakeUps = [];
    for (const resolve of wakeUps) resolve();
  }
}
