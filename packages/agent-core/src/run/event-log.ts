import { closeSync, existsSync, fstatSync, ftruncateSync, openSync, readSync, writeSync } from "node:fs";
import { KeenError } from "../errors.js";
import { KeenEvent } from "../events.js";

/**
 * Where a run's events are kept: appended in `seq` order, read back after a given `seq`. A run
 * holds only a small window of recent events in memory and reads older ones from its log, so a
 * host chooses how much is kept and where: the in-memory default (bounded), an NDJSON file
 * (`NdjsonEventLog`, what the CLI keeps beside its snapshot), or a database. Every
 * implementation must pass `runEventLogContract` from `@keen/agent-core/testing`.
 *
 * @example
 * const log = await NdjsonEventLog.open("run.events.ndjson");
 * const run = startTask({ ...options, eventLog: log });
 */
export interface EventLog {
  /** Stores one event. Events arrive in strictly increasing `seq`; the run awaits every append before it ends. */
  append(event: KeenEvent): void | Promise<void>;
  /**
   * Up to `limit` events with `seq > afterSeq`, in order. Throws `KeenError` code
   * `events_evicted` when the first of them is no longer kept.
   */
  readAfter(afterSeq: number, limit: number): KeenEvent[] | Promise<KeenEvent[]>;
  /** The highest stored `seq`, or -1 when the log is empty. A resumed run continues after it. */
  lastSeq(): number | Promise<number>;
}

/** The events before `seq` were dropped from a bounded log. */
export class EventsEvictedError extends KeenError {
  constructor(seq: number, oldest: number) {
    super("events_evicted", `Event ${seq} is no longer kept (the oldest kept is ${oldest}); read faster or give the run a larger event log`);
  }
}

/**
 * The default log: the last `maxEvents` events in memory (default 10 000), older ones dropped.
 * Nothing survives the process.
 */
export class MemoryEventLog implements EventLog {
  readonly maxEvents: number;
  private readonly ring: KeenEvent[] = [];
  private start = 0;

  constructor(options: { maxEvents?: number } = {}) {
    this.maxEvents = options.maxEvents ?? 10_000;
    if (!Number.isInteger(this.maxEvents) || this.maxEvents < 1) throw new KeenError("config_error", "MemoryEventLog: `maxEvents` must be a positive integer");
  }

  /** Events held now (at most `maxEvents`). */
  get size(): number {
    return this.ring.length - this.start;
  }

  append(event: KeenEvent): void {
    this.ring.push(event);
    if (this.size > this.maxEvents) this.start++;
    // Compact now and then so dropped events can be collected.
    if (this.start > 1024 && this.start * 2 > this.ring.length) {
      this.ring.splice(0, this.start);
      this.start = 0;
    }
  }

  readAfter(afterSeq: number, limit: number): KeenEvent[] {
    if (this.size === 0) return [];
    const oldest = this.ring[this.start]!.seq;
    if (afterSeq + 1 < oldest) throw new EventsEvictedError(afterSeq + 1, oldest);
    const from = this.start + Math.max(0, afterSeq + 1 - oldest);
    return this.ring.slice(from, from + limit);
  }

  lastSeq(): number {
    return this.size === 0 ? -1 : this.ring.at(-1)!.seq;
  }
}

/**
 * Events as newline-delimited JSON in one file, appended synchronously so an event that was
 * emitted is on disk even if the process is killed right after. Memory holds one byte offset
 * per event. Opening an existing file continues it (a torn last line from a crash is cut off).
 */
export class NdjsonEventLog implements EventLog {
  private readonly offsets: number[] = [];
  private firstSeq = 0;
  private last = -1;
  private size = 0;

  private constructor(
    readonly path: string,
    private fd: number,
  ) {}

  static async open(path: string): Promise<NdjsonEventLog> {
    const fd = openSync(path, existsSync(path) ? "r+" : "w+", 0o600);
    const log = new NdjsonEventLog(path, fd);
    log.scan();
    return log;
  }

  append(event: KeenEvent): void {
    if (event.seq <= this.last) throw new KeenError("event_seq_reused", `Event seq ${event.seq} is not after the last stored seq ${this.last}`);
    const line = Buffer.from(`${JSON.stringify(event)}\n`);
    if (this.offsets.length === 0) this.firstSeq = event.seq;
    this.offsets.push(this.size);
    let written = 0;
    while (written < line.length) written += writeSync(this.fd, line, written, line.length - written, this.size + written);
    this.size += line.length;
    this.last = event.seq;
  }

  readAfter(afterSeq: number, limit: number): KeenEvent[] {
    const index = Math.max(0, afterSeq + 1 - this.firstSeq);
    if (index >= this.offsets.length) return [];
    const end = Math.min(this.offsets.length, index + limit);
    const from = this.offsets[index]!;
    const to = end < this.offsets.length ? this.offsets[end]! : this.size;
    const buffer = Buffer.alloc(to - from);
    readSync(this.fd, buffer, 0, buffer.length, from);
    return buffer
      .toString("utf8")
      .split("\n")
      .filter(Boolean)
      .map((line) => KeenEvent.parse(JSON.parse(line)));
  }

  lastSeq(): number {
    return this.last;
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  /** Indexes an existing file; cuts a torn last line (a crash mid-append). */
  private scan(): void {
    const total = fstatSync(this.fd).size;
    const chunk = Buffer.alloc(1 << 16);
    let position = 0;
    let lineStart = 0;
    let pending: Buffer = Buffer.alloc(0);
    while (position < total) {
      const read = readSync(this.fd, chunk, 0, chunk.length, position);
      const text = chunk.subarray(0, read);
      let cursor = 0;
      while (cursor < text.length) {
        const newline = text.indexOf(10, cursor);
        if (newline === -1) {
          pending = Buffer.concat([pending, text.subarray(cursor)]);
          break;
        }
        const line = Buffer.concat([pending, text.subarray(cursor, newline)]).toString("utf8");
        pending = Buffer.alloc(0);
        const event = KeenEvent.parse(JSON.parse(line));
        if (this.offsets.length === 0) this.firstSeq = event.seq;
        this.offsets.push(lineStart);
        this.last = event.seq;
        lineStart = position + newline + 1;
        cursor = newline + 1;
      }
      position += read;
    }
    if (lineStart < total) ftruncateSync(this.fd, lineStart);
    this.size = lineStart;
  }
}
