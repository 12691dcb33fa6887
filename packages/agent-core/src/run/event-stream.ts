import type { KeenEvent, KeenEventInput, KeenEventOf, KeenEventType } from "../events.js";

type Listener = (event: KeenEvent) => void;

/**
 * The ordered event log of one run. `emit` stamps each event with the run id, the next
 * `seq` and a timestamp. Every iterator starts at the first event and reads at its own pace:
 * the log keeps all events of the run, so a slow consumer lags but never loses one.
 *
 * @example
 * const stream = new EventStream("run_1");
 * stream.on("tool.started", (e) => console.log(e.name));
 * for await (const event of stream) console.log(event.seq, event.type);
 */
export class EventStream implements AsyncIterable<KeenEvent> {
  readonly runId: string;
  private readonly events: KeenEvent[] = [];
  private readonly listeners = new Map<string, Set<Listener>>();
  private wakeUps: Array<() => void> = [];
  private closed = false;
  private nextSeq: number;

  constructor(runId: string, options: { startSeq?: number; now?: () => Date } = {}) {
    this.runId = runId;
    this.nextSeq = options.startSeq ?? 0;
    if (options.now) this.now = options.now;
  }

  private now: () => Date = () => new Date();

  /** Events emitted so far, in order. */
  get history(): readonly KeenEvent[] {
    return this.events;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** The seq the next event will get. */
  get seq(): number {
    return this.nextSeq;
  }

  emit(input: KeenEventInput): KeenEvent {
    if (this.closed) throw new Error(`Event stream of run ${this.runId} is closed`);
    const event = { ...input, runId: this.runId, seq: this.nextSeq++, at: this.now().toISOString() } as KeenEvent;
    this.events.push(event);
    for (const key of [event.type, "*"]) {
      for (const listener of this.listeners.get(key) ?? []) {
        try {
          listener(event);
        } catch {
          // A faulty subscriber must not break the run or starve the other subscribers.
        }
      }
    }
    this.wake();
    return event;
  }

  /** Subscribes to one event type (or `*` for all); returns the unsubscribe function. */
  on<T extends KeenEventType>(type: T, listener: (event: KeenEventOf<T>) => void): () => void;
  on(type: "*", listener: (event: KeenEvent) => void): () => void;
  on(type: string, listener: (event: any) => void): () => void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Ends every iterator once it has read the last event. */
  close(): void {
    this.closed = true;
    this.wake();
  }

  /** Iterates from `fromSeq` (default: the first event) until the stream closes. */
  async *iterate(fromSeq = 0): AsyncGenerator<KeenEvent> {
    const first = this.events[0]?.seq ?? this.nextSeq;
    let index = Math.max(0, fromSeq - first);
    while (true) {
      while (index < this.events.length) yield this.events[index++]!;
      if (this.closed) return;
      await new Promise<void>((resolve) => this.wakeUps.push(resolve));
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<KeenEvent> {
    return this.iterate();
  }

  private wake(): void {
    const wakeUps = this.wakeUps;
    this.wakeUps = [];
    for (const resolve of wakeUps) resolve();
  }
}
