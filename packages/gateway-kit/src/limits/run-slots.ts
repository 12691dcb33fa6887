import { GatewayError } from "../errors.js";
import { sql, type Kysely } from "kysely";
import * as z from "zod";
import { clockOption, parseOptions } from "../options.js";
import type { LimitTables } from "./tables.js";

/** One counter a run takes a slot from: `user:<id>` with at most `limit` concurrent runs. */
export interface SlotHold {
  key: string;
  limit: number;
}

export type SlotAcquireResult =
  | { acquired: true; expiresAt: Date }
  | { acquired: false; key: string; limit: number; active: number };

/**
 * Where run slots live. A slot is a lease: it counts while `now < expiresAt`, and one that
 * is not renewed (its process died) stops counting and is reclaimed by the next acquire.
 */
export interface RunSlotStore {
  /** Takes one slot per hold for `runId`, all or none. Acquiring again for the same run renews it. */
  acquire(runId: string, holds: SlotHold[], leaseMs: number, now: Date): Promise<SlotAcquireResult>;
  /** Extends a live lease; `undefined` when the lease already expired or was released. */
  renew(runId: string, leaseMs: number, now: Date): Promise<Date | undefined>;
  release(runId: string): Promise<boolean>;
  /** Live slots of one key. */
  active(key: string, now: Date): Promise<number>;
  /** Deletes expired leases; returns how many. */
  reclaimExpired(now: Date): Promise<number>;
}

/**
 * Run slots in one process's memory.
 *
 * @example
 * const slots = createRunSlots({ store: createMemoryRunSlotStore(), limits: { user: 2 } });
 */
export function createMemoryRunSlotStore(): RunSlotStore {
  const runs = new Map<string, { keys: Set<string>; expiresMs: number }>();
  const live = (now: Date) => [...runs.entries()].filter(([, r]) => r.expiresMs > now.getTime());
  const count = (key: string, now: Date, except?: string) => live(now).filter(([id, r]) => id !== except && r.keys.has(key)).length;
  return {
    async acquire(runId, holds, leaseMs, now) {
      const existing = runs.get(runId);
      const mine = existing && existing.expiresMs > now.getTime() ? existing.keys : new Set<string>();
      for (const hold of holds) {
        const active = count(hold.key, now, runId);
        if (!mine.has(hold.key) && active >= hold.limit) return { acquired: false, key: hold.key, limit: hold.limit, active };
      }
      const expiresMs = now.getTime() + leaseMs;
      runs.set(runId, { keys: new Set([...mine, ...holds.map((h) => h.key)]), expiresMs });
      return { acquired: true, expiresAt: new Date(expiresMs) };
    },
    async renew(runId, leaseMs, now) {
      const run = runs.get(runId);
      if (!run || run.expiresMs <= now.getTime()) return undefined;
      run.expiresMs = now.getTime() + leaseMs;
      return new Date(run.expiresMs);
    },
    release: async (runId) => runs.delete(runId),
    active: async (key, now) => count(key, now),
    async reclaimExpired(now) {
      let removed = 0;
      for (const [id, run] of runs) {
        if (run.expiresMs <= now.getTime()) {
          runs.delete(id);
          removed += 1;
        }
      }
      return removed;
    },
  };
}

/**
 * Run slots in PostgreSQL (or PGlite), shared by every process. An acquire takes a
 * transaction-scoped advisory lock per key (in key order, so acquires never deadlock), drops
 * expired leases of those keys, counts, and inserts. Run `limitMigrations` first.
 *
 * @example
 * const slots = createRunSlots({ store: createKyselyRunSlotStore(db), limits: { user: 2, team: 10 } });
 */
export function createKyselyRunSlotStore(db: Kysely<any>): RunSlotStore {
  const kdb = db as Kysely<LimitTables>;
  return {
    async acquire(runId, holds, leaseMs, now) {
      const sorted = [...new Map(holds.map((h) => [h.key, h])).values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      if (sorted.length === 0) return { acquired: true, expiresAt: new Date(now.getTime() + leaseMs) };
      const keys = sorted.map((h) => h.key);
      return kdb.transaction().execute(async (trx) => {
        for (const key of keys) await sql`select pg_advisory_xact_lock(hashtextextended(${`gk_run_slots:${key}`}, 0))`.execute(trx);
        // Expired leases are dropped and live ones read in one statement (both see the same snapshot).
        const rows = await trx
          .with("reclaimed", (q) => q.deleteFrom("run_slots").where("scope_key", "in", keys).where("lease_expires_at", "<=", now).returning("run_id"))
          .selectFrom("run_slots")
          .select(["scope_key", "run_id"])
          .where("scope_key", "in", keys)
          .where("lease_expires_at", ">", now)
          .execute();
        const mine = new Set(rows.filter((r) => r.run_id === runId).map((r) => r.scope_key));
        for (const hold of sorted) {
          const active = rows.filter((r) => r.scope_key === hold.key && r.run_id !== runId).length;
          if (!mine.has(hold.key) && active >= hold.limit) return { acquired: false as const, key: hold.key, limit: hold.limit, active };
        }
        const expiresAt = new Date(now.getTime() + leaseMs);
        await trx
          .insertInto("run_slots")
          .values(keys.map((key) => ({ run_id: runId, scope_key: key, acquired_at: now, lease_expires_at: expiresAt })))
          .onConflict((oc) => oc.columns(["run_id", "scope_key"]).doUpdateSet({ lease_expires_at: expiresAt }))
          .execute();
        return { acquired: true as const, expiresAt };
      });
    },
    async renew(runId, leaseMs, now) {
      const expiresAt = new Date(now.getTime() + leaseMs);
      const rows = await kdb
        .updateTable("run_slots")
        .set({ lease_expires_at: expiresAt })
        .where("run_id", "=", runId)
        .where("lease_expires_at", ">", now)
        .returning("scope_key")
        .execute();
      return rows.length > 0 ? expiresAt : undefined;
    },
    async release(runId) {
      const result = await kdb.deleteFrom("run_slots").where("run_id", "=", runId).executeTakeFirst();
      return Number(result.numDeletedRows) > 0;
    },
    async active(key, now) {
      const row = await kdb
        .selectFrom("run_slots")
        .select((eb) => eb.fn.countAll<string | number>().as("n"))
        .where("scope_key", "=", key)
        .where("lease_expires_at", ">", now)
        .executeTakeFirstOrThrow();
      return Number(row.n);
    },
    async reclaimExpired(now) {
      const result = await kdb.deleteFrom("run_slots").where("lease_expires_at", "<=", now).executeTakeFirst();
      return Number(result.numDeletedRows);
    },
  };
}

/** The caller already runs as many runs as allowed. Renders as 429 `too_many_concurrent_runs`. */
export class ConcurrencyLimitError extends GatewayError {
  constructor(scope: string, limit: number, active: number) {
    super("too_many_concurrent_runs", `The ${scope} already has ${active} of ${limit} concurrent runs; wait for one to finish`, {
      details: { scope, limit, active },
    });
    this.name = "ConcurrencyLimitError";
  }
}

/** A run's lease expired (its heartbeat stopped too long) and its slot may be taken by another run. */
export class RunSlotLostError extends GatewayError {
  constructor(runId: string) {
    super("run_slot_lost", `The slot of run ${runId} expired before it was renewed`, { details: { runId } });
    this.name = "RunSlotLostError";
  }
}

/** A held slot. Renew it more often than `leaseMs` while the run lives; release it when it ends. */
export interface RunSlot {
  runId: string;
  expiresAt: Date;
  /** Extends the lease; throws `RunSlotLostError` when it had already expired. */
  renew(): Promise<void>;
  release(): Promise<void>;
  /** Renews every `intervalMs` (default a third of the lease) until the returned stop function is called. */
  keepAlive(intervalMs?: number, onLost?: (error: RunSlotLostError) => void): () => void;
}

const RunSlotsOptions = z
  .object({
    store: z.custom<RunSlotStore>((v) => typeof (v as RunSlotStore)?.acquire === "function", "store must implement RunSlotStore"),
    /** Concurrent runs per user and per team; an absent limit is not enforced. */
    limits: z
      .object({ user: z.number().int().min(1).max(10_000).optional(), team: z.number().int().min(1).max(100_000).optional() })
      .strict()
      .refine((l) => l.user !== undefined || l.team !== undefined, { message: "set a user or a team limit" }),
    /** How long a slot lives without renewal. Default 60 s. */
    leaseMs: z.number().int().min(100).max(24 * 3600_000).default(60_000),
    now: clockOption(),
  })
  .strict();
export type RunSlotsOptions = z.input<typeof RunSlotsOptions>;

export interface RunSlots {
  /** Takes a slot for the run from its user's and team's limits, or throws `ConcurrencyLimitError`. */
  acquire(run: { runId: string; userId: string; teamId?: string | undefined }): Promise<RunSlot>;
  renew(runId: string): Promise<Date | undefined>;
  release(runId: string): Promise<boolean>;
  active(scope: { userId: string } | { teamId: string }): Promise<number>;
  /** Deletes expired leases, e.g. from a periodic sweeper; acquires also reclaim what they meet. */
  reclaimExpired(): Promise<number>;
}

/**
 * Concurrent-run limits per user and team. A run holds its slot as a lease, renewed by a
 * heartbeat (`slot.keepAlive()`); when a process dies, its leases lapse and the slots come back.
 *
 * @example
 * const slots = createRunSlots({ store: createKyselyRunSlotStore(db), limits: { user: 2, team: 10 }, leaseMs: 30_000 });
 * const slot = await slots.acquire({ runId, userId, teamId });
 * const stop = slot.keepAlive();
 * try { await runAgent(); } finally { stop(); await slot.release(); }
 */
export function createRunSlots(input: RunSlotsOptions): RunSlots {
  const { store, limits, leaseMs, now } = parseOptions(RunSlotsOptions, input, "run slots");
  const service: RunSlots = {
    async acquire({ runId, userId, teamId }) {
      const holds: SlotHold[] = [];
      if (limits.user !== undefined) holds.push({ key: `user:${userId}`, limit: limits.user });
      if (limits.team !== undefined && teamId) holds.push({ key: `team:${teamId}`, limit: limits.team });
      const result = await store.acquire(runId, holds, leaseMs, now());
      if (!result.acquired) throw new ConcurrencyLimitError(result.key.slice(0, result.key.indexOf(":")), result.limit, result.active);
      const slot: RunSlot = {
        runId,
        expiresAt: result.expiresAt,
        async renew() {
          const expiresAt = await store.renew(runId, leaseMs, now());
          if (!expiresAt) throw new RunSlotLostError(runId);
          slot.expiresAt = expiresAt;
        },
        async release() {
          await store.release(runId);
        },
        keepAlive(intervalMs = Math.max(50, Math.floor(leaseMs / 3)), onLost) {
          const timer = setInterval(() => {
            slot.renew().catch((error) => {
              if (error instanceof RunSlotLostError) {
                clearInterval(timer);
                onLost?.(error);
              }
            });
          }, intervalMs);
          timer.unref();
          return () => clearInterval(timer);
        },
      };
      return slot;
    },
    renew: (runId) => store.renew(runId, leaseMs, now()),
    release: (runId) => store.release(runId),
    active: (scope) => store.active("userId" in scope ? `user:${scope.userId}` : `team:${scope.teamId}`, now()),
    reclaimExpired: () => store.reclaimExpired(now()),
  };
  return service;
}
