import type pg from "pg";

/** An event as stored: the server's own `seq` within the run, and the agent-core event. */
export interface StoredEvent {
  runId: string;
  seq: number;
  type: string;
  agentId: string;
  at: string;
  payload: Record<string, unknown>;
}

/**
 * A wake-up for a run's followers: the newest stored seq, and (inside one process) the events
 * themselves, so followers that are caught up need not read them back from the table.
 */
export interface RunNotice {
  runId: string;
  lastSeq: number;
  events?: readonly StoredEvent[];
  /** The run reached a final state. */
  ended?: boolean;
}

/**
 * Tells followers of a run that new events are in the table. Notices are hints only: a
 * follower always reads what it missed from the table, so a lost notice delays, never drops.
 */
export interface EventBus {
  publish(notice: RunNotice): Promise<void>;
  subscribe(runId: string, listener: (notice: RunNotice) => void): () => void;
  close(): Promise<void>;
}

class Listeners {
  private readonly byRun = new Map<string, Set<(notice: RunNotice) => void>>();

  add(runId: string, listener: (notice: RunNotice) => void): () => void {
    let set = this.byRun.get(runId);
    if (!set) this.byRun.set(runId, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0 && this.byRun.get(runId) === set) this.byRun.delete(runId);
    };
  }

  deliver(notice: RunNotice): void {
    for (const listener of this.byRun.get(notice.runId) ?? []) {
      try {
        listener(notice);
      } catch {
        // One faulty follower must not starve the others.
      }
    }
  }
}

/**
 * The bus inside one process (PGlite, or a single server).
 *
 * @example
 * const bus = localEventBus();
 * const stop = bus.subscribe("run_1", (n) => console.log(n.lastSeq));
 */
export function localEventBus(): EventBus {
  const listeners = new Listeners();
  return {
    async publish(notice) {
      listeners.deliver(notice);
    },
    subscribe: (runId, listener) => listeners.add(runId, listener),
    async close() {},
  };
}

export const NOTIFY_CHANNEL = "keen_run_events";

/**
 * A bus over PostgreSQL LISTEN/NOTIFY, so a follower on one server process sees events a run
 * writes in another. Local followers get the events in memory; other processes get
 * `runId`, `lastSeq` and `ended` and read the events from the table.
 *
 * @example
 * const bus = await postgresEventBus({ url: process.env.DATABASE_URL!, schema: "public" });
 */
export async function postgresEventBus(options: { url: string; schema?: string; onError?: (error: unknown) => void }): Promise<EventBus> {
  // Loaded here, not at the top, so a PGlite server never loads the PostgreSQL driver.
  const { default: pgDriver } = await import("pg");
  const listeners = new Listeners();
  // A channel per schema keeps servers sharing one PostgreSQL but not one schema apart.
  const channel = options.schema ? `${NOTIFY_CHANNEL}_${options.schema}` : NOTIFY_CHANNEL;
  const origin = `${process.pid}-${Math.random().toString(36).slice(2)}`;
  let listener: pg.Client | undefined;
  let closed = false;
  const connect = async () => {
    const client = new pgDriver.Client({ connectionString: options.url });
    client.on("error", (error) => {
      options.onError?.(error);
      if (!closed) setTimeout(() => void connect().catch(options.onError), 500).unref();
    });
    client.on("notification", (message) => {
      if (message.channel !== channel || !message.payload) return;
      try {
        const parsed = JSON.parse(message.payload) as { o: string; r: string; s: number; e?: boolean };
        if (parsed.o === origin) return;
        listeners.deliver({ runId: parsed.r, lastSeq: parsed.s, ...(parsed.e ? { ended: true } : {}) });
      } catch (error) {
        options.onError?.(error);
      }
    });
    await client.connect();
    await client.query(`listen "${channel}"`);
    listener = client;
  };
  await connect();
  const sender = new pgDriver.Pool({ connectionString: options.url, max: 2 });
  return {
    async publish(notice) {
      listeners.deliver(notice);
      const payload = JSON.stringify({ o: origin, r: notice.runId, s: notice.lastSeq, ...(notice.ended ? { e: true } : {}) });
      await sender.query("select pg_notify($1, $2)", [channel, payload]);
    },
    subscribe: (runId, listener) => listeners.add(runId, listener),
    async close() {
      closed = true;
      await listener?.end().catch(() => {});
      await sender.end();
    },
  };
}
