import { redactSecretsDeep } from "@keen/gateway-kit";
import type { Kysely } from "kysely";
import type { ServerTables } from "../db/tables.js";
import type { EventBus, StoredEvent } from "./event-bus.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled", "interrupted"]);

/** True for a run state nothing follows. */
export function isTerminal(status: string): boolean {
  return TERMINAL.has(status);
}

/**
 * The run events table: append in order, read pages after a cursor.
 *
 * @example
 * const log = new RunEventLog(db);
 * const page = await log.page("run_1", 0, 100);
 */
export class RunEventLog {
  constructor(private readonly db: Kysely<ServerTables>) {}

  /** The seq the run's next event gets. */
  async nextSeq(runId: string): Promise<number> {
    const row = await this.db
      .selectFrom("run_events")
      .select((eb) => eb.fn.max("seq").as("last"))
      .where("run_id", "=", runId)
      .executeTakeFirst();
    return Number(row?.last ?? 0) + 1;
  }

  /** Writes events that already carry their seq; the (run_id, seq) key refuses a number used twice. */
  async append(events: readonly StoredEvent[]): Promise<void> {
    if (events.length === 0) return;
    await this.db
      .insertInto("run_events")
      .values(events.map((e) => ({ run_id: e.runId, seq: e.seq, type: e.type, agent_id: e.agentId, payload: JSON.stringify(e.payload), at: e.at })))
      .execute();
  }

  /** Up to `limit` events with seq > `after`, in order. */
  async page(runId: string, after: number, limit: number): Promise<StoredEvent[]> {
    const rows = await this.db
      .selectFrom("run_events")
      .select(["run_id", "seq", "type", "agent_id", "payload", "at"])
      .where("run_id", "=", runId)
      .where("seq", ">", after)
      .orderBy("seq")
      .limit(limit)
      .execute();
    return rows.map((r) => ({
      runId: r.run_id,
      seq: Number(r.seq),
      type: r.type,
      agentId: r.agent_id,
      at: new Date(r.at).toISOString(),
      payload: (typeof r.payload === "string" ? JSON.parse(r.payload) : r.payload) as Record<string, unknown>,
    }));
  }

  async status(runId: string): Promise<string | undefined> {
    const row = await this.db.selectFrom("runs").select("status").where("id", "=", runId).executeTakeFirst();
    return row?.status;
  }
}

/**
 * Numbers a run's events, writes them to the table in batches and only then publishes them, so
 * whatever a follower sees is already durable. `write` never blocks the run; `flush` waits.
 */
export class RunEventWriter {
  private pending: StoredEvent[] = [];
  private draining: Promise<void> | undefined;
  private failure: unknown;
  private readonly afterWrite: Array<() => Promise<void>> = [];

  constructor(
    private readonly runId: string,
    private nextSeq: number,
    private readonly log: RunEventLog,
    private readonly bus: EventBus,
    private readonly onWritten?: (events: readonly StoredEvent[]) => void,
  ) {}

  /** Seq of the last event handed to `write`. */
  get lastSeq(): number {
    return this.nextSeq - 1;
  }

  /** Queues one agent-core event; secrets are redacted before it is stored. */
  write(event: { type: string; agentId: string; at: string } & Record<string, unknown>): void {
    const payload = redactSecretsDeep({ ...event }) as Record<string, unknown>;
    this.pending.push({ runId: this.runId, seq: this.nextSeq++, type: event.type, agentId: event.agentId, at: event.at, payload });
    this.drain();
  }

  /** Runs `task` after every event queued so far is written (e.g. a snapshot checkpoint). */
  after(task: () => Promise<void>): void {
    this.afterWrite.push(task);
    this.drain();
  }

  /** Waits until everything queued is written; rethrows a write failure. */
  async flush(): Promise<void> {
    while (this.draining) await this.draining;
    if (this.failure) throw this.failure;
  }

  private drain(): void {
    if (this.draining) return;
    this.draining = (async () => {
      try {
        while (this.pending.length > 0 || this.afterWrite.length > 0) {
          const batch = this.pending.splice(0, 500);
          const tasks = this.afterWrite.splice(0);
          if (batch.length > 0) {
            await this.log.append(batch);
            this.onWritten?.(batch);
            await this.bus.publish({ runId: this.runId, lastSeq: batch.at(-1)!.seq, events: batch });
          }
          for (const task of tasks) await task();
        }
      } catch (error) {
        this.failure ??= error;
        this.pending = [];
      } finally {
        this.draining = undefined;
      }
    })();
  }
}
