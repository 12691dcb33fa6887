import { randomUUID } from "node:crypto";
import { rm } from "node:fs/promises";
import type { Ledger, PriceList, Principal, RunSlots, Spend } from "@keen/gateway-kit";
import { sql, type Kysely, type Selectable } from "kysely";
import type { AdminCheck } from "../admins.js";
import type { ServerConfig } from "../config.js";
import type { RunAgentsTable, RunsTable, ServerTables } from "../db/tables.js";
import { ServerError } from "../errors.js";
import type { EventBus } from "../events/event-bus.js";
import type { JobQueue } from "../queue/job-queue.js";
import { lockLiveUser } from "../privacy/live-user.js";
import { findUpload } from "../uploads/routes.js";
import { runFolders } from "./provision.js";
import type { CreateRunBody } from "./run-input.js";
import { releaseRunHold, RUN_HOLD_TTL_MS, runBudgetScopes } from "./run-spend.js";

export const RUN_QUEUE = "keen-runs";

export interface RunJob {
  runId: string;
}

export type RunRow = Selectable<RunsTable>;

/** A run as the API shows it. */
export interface RunView {
  id: string;
  status: RunsTable["status"];
  vision: string;
  repo: Record<string, unknown>;
  options: Record<string, unknown>;
  model: string;
  teamId: string;
  userId: string;
  branch: string | null;
  baseCommit: string | null;
  headCommit: string | null;
  summary: string | null;
  error: { code: string; message: string } | null;
  usage: Record<string, number> | null;
  /** Micro-credits charged at settlement. */
  cost: number | null;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
}

export interface AgentView {
  id: string;
  parentId: string | null;
  depth: number;
  branch: string;
  title: string;
  phase: string;
  status: string | null;
  usage: Record<string, number>;
  cost: number;
  children: AgentView[];
}

const json = <T>(value: unknown): T => (typeof value === "string" ? JSON.parse(value) : value) as T;
const iso = (value: Date | string | null) => (value === null ? null : new Date(value).toISOString());

export function runView(row: RunRow): RunView {
  return {
    id: row.id,
    status: row.status,
    vision: row.vision,
    repo: json(row.repo),
    options: json(row.options),
    model: row.model,
    teamId: row.team_id,
    userId: row.user_id,
    branch: row.branch,
    baseCommit: row.base_commit,
    headCommit: row.head_commit,
    summary: row.summary,
    error: row.error === null ? null : json(row.error),
    usage: row.usage === null ? null : json(row.usage),
    cost: row.charged === null ? null : Number(row.charged),
    createdAt: iso(row.created_at)!,
    startedAt: iso(row.started_at),
    finishedAt: iso(row.finished_at),
  };
}

/** Builds the agent tree from flat rows (parents before children is not assumed). */
export function agentTree(rows: Selectable<RunAgentsTable>[]): AgentView[] {
  const views = new Map<string, AgentView>();
  for (const r of rows) {
    views.set(r.agent_id, {
      id: r.agent_id,
      parentId: r.parent_id,
      depth: r.depth,
      branch: r.branch,
      title: r.title,
      phase: r.phase,
      status: r.status,
      usage: json(r.usage),
      cost: Number(r.cost),
      children: [],
    });
  }
  const roots: AgentView[] = [];
  for (const view of views.values()) {
    const parent = view.parentId ? views.get(view.parentId) : undefined;
    if (parent) parent.children.push(view);
    else roots.push(view);
  }
  return roots;
}

export interface RunServiceDeps {
  db: Kysely<ServerTables>;
  config: ServerConfig;
  ledger: Ledger;
  /** Holds a run's credits in the team wallet and the user's and team's budgets, in one handle. */
  spend: Spend;
  slots: RunSlots;
  queue: JobQueue;
  bus: EventBus;
  priceList: PriceList;
  /** Whether the principal is a server admin: `adminCheck` in admins.ts (listed and verified). */
  isAdmin: AdminCheck;
  /** Told once a run reached a final state here (webhooks are enqueued from it). */
  onRunEnded?: (runId: string) => Promise<void>;
}

function encodeCursor(row: { created_at: Date | string; id: string }): string {
  return Buffer.from(`${new Date(row.created_at).toISOString()}|${row.id}`).toString("base64url");
}

/**
 * Reads a cursor back, accepting only what `encodeCursor` writes (a four-digit-year ISO time and
 * a run id, re-encoding to the same text): a forged one with a time the database cannot hold
 * (`+275760-…`), another spelling or trailing bytes is a 400, never a query.
 */
function decodeCursor(cursor: string): { createdAt: Date; id: string } {
  const refused = new ServerError("invalid_request", "cursor is not one this API returned");
  const match = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z)\|(run_[0-9a-f-]{36})$/.exec(Buffer.from(cursor, "base64url").toString("utf8"));
  if (!match) throw refused;
  const createdAt = new Date(match[1]!);
  const id = match[2]!;
  if (Number.isNaN(createdAt.getTime()) || createdAt.getUTCFullYear() < 1970 || encodeCursor({ created_at: createdAt, id }) !== cursor) throw refused;
  return { createdAt, id };
}

/**
 * Runs as a domain: create (slot, reservation, row, job — all or nothing), read within a
 * tenant, list, cancel. Throws coded errors; knows nothing of HTTP.
 *
 * @example
 * const runs = createRunService(deps);
 * const run = await runs.create(principal, { vision: "Add a README", repo: { url: "https://git.example/app.git" }, options: {} });
 */
export function createRunService(deps: RunServiceDeps) {
  const { db, config, ledger, spend, slots, queue } = deps;

  async function load(principal: Principal, runId: string): Promise<RunRow> {
    // Another tenant's run and a missing one look the same.
    if (!principal.teamId || !/^run_[0-9a-f-]{36}$/.test(runId)) throw new ServerError("not_found", "Run not found");
    const row = await db.selectFrom("runs").selectAll().where("id", "=", runId).where("team_id", "=", principal.teamId).executeTakeFirst();
    if (!row) throw new ServerError("not_found", "Run not found");
    return row;
  }

  return {
    load,

    async create(principal: Principal, body: CreateRunBody): Promise<RunView> {
      const teamId = principal.teamId;
      if (!teamId) throw new ServerError("forbidden", "Choose a team before starting a run");
      if ("path" in body.repo && !config.localMode && !(await deps.isAdmin(principal))) {
        throw new ServerError("forbidden", "repo.path is for server admins (or local mode); send repo.url");
      }
      if ("uploadId" in body.repo) await findUpload(db, teamId, body.repo.uploadId);
      const model = body.options.model ?? config.model;
      deps.priceList.priceOf(model); // an unknown model is refused before anything is held
      const runId = `run_${randomUUID()}`;
      // Concurrency slot, then credits, then the row: each step undone if a later one fails.
      const slot = await slots.acquire({ runId, userId: principal.userId, teamId });
      let handle: string | undefined;
      try {
        // The team wallet and the user's and team's budgets, all held or none.
        const hold = await spend.reserve({
          wallet: { teamId },
          estimate: config.runReserve,
          idempotencyKey: `run:${runId}:reserve`,
          scopes: runBudgetScopes(principal.userId, teamId),
          ttlMs: RUN_HOLD_TTL_MS,
          reference: runId,
        });
        handle = hold.handle;
        // The row only for a live user, decided under the user's row lock the erasure takes.
        const row = await db.transaction().execute(async (trx) => {
          await lockLiveUser(trx, principal.userId);
          return trx
            .insertInto("runs")
            .values({
              id: runId,
              team_id: teamId,
              user_id: principal.userId,
              vision: body.vision,
              repo: JSON.stringify(body.repo),
              options: JSON.stringify(body.options),
              model,
              status: "queued",
              snapshot: null,
              reservation_id: hold.handle,
              charged: null,
              usage: null,
              error: null,
              summary: null,
              base_commit: null,
              head_commit: null,
              branch: null,
              worker_id: null,
              heartbeat_at: null,
              created_at: new Date(),
              started_at: null,
              finished_at: null,
            })
            .returningAll()
            .executeTakeFirstOrThrow();
        });
        // A failed enqueue leaves a queued row that the recovery sweep enqueues again.
        await queue.send<RunJob>(RUN_QUEUE, { runId }, { key: runId }).catch(() => {});
        return runView(row);
      } catch (error) {
        if (handle) await releaseRunHold(spend, ledger, handle).catch(() => {});
        await slot.release().catch(() => {});
        throw error;
      }
    },

    async get(principal: Principal, runId: string): Promise<RunView & { agents: AgentView[] }> {
      const row = await load(principal, runId);
      const agents = await db.selectFrom("run_agents").selectAll().where("run_id", "=", row.id).orderBy("agent_id").execute();
      return { ...runView(row), agents: agentTree(agents) };
    },

    async list(principal: Principal, query: { limit: number; cursor?: string | undefined }): Promise<{ runs: RunView[]; nextCursor: string | null }> {
      if (!principal.teamId) return { runs: [], nextCursor: null };
      let q = db.selectFrom("runs").selectAll().where("team_id", "=", principal.teamId);
      if (query.cursor) {
        const { createdAt, id } = decodeCursor(query.cursor);
        q = q.where((eb) => eb.or([eb("created_at", "<", createdAt), eb.and([eb("created_at", "=", createdAt), eb("id", "<", id)])]));
      }
      const rows = await q.orderBy("created_at", "desc").orderBy("id", "desc").limit(query.limit + 1).execute();
      const page = rows.slice(0, query.limit);
      return { runs: page.map(runView), nextCursor: rows.length > query.limit ? encodeCursor(page.at(-1)!) : null };
    },

    /**
     * Continues an `interrupted` run, or a `failed` one that has a snapshot, from its snapshot:
     * a concurrency slot and a fresh reservation are taken (undone if a later step fails), the
     * run goes back to `queued` and a job is sent. What earlier attempts were charged stays
     * charged; the resumed attempt pays only for the usage beyond it.
     */
    async resume(principal: Principal, runId: string): Promise<RunView> {
      const row = await load(principal, runId);
      if (!(row.status === "interrupted" || (row.status === "failed" && row.snapshot !== null))) {
        throw new ServerError("run_not_resumable", `Run ${row.id} is ${row.status}${row.status === "failed" ? " with no snapshot" : ""}; only interrupted runs, or failed ones with a snapshot, resume`);
      }
      const slot = await slots.acquire({ runId: row.id, userId: row.user_id, teamId: row.team_id });
      let handle: string | undefined;
      try {
        const hold = await spend.reserve({
          wallet: { teamId: row.team_id },
          estimate: config.runReserve,
          idempotencyKey: `run:${row.id}:resume:${row.attempt}`,
          scopes: runBudgetScopes(row.user_id, row.team_id),
          ttlMs: RUN_HOLD_TTL_MS,
          reference: row.id,
        });
        handle = hold.handle;
        // Only the caller that moves the run out of its finished state resumes it, and only
        // while the run's owner (who may not be the caller) is not being erased.
        const resumed = await db.transaction().execute(async (trx) => {
          await lockLiveUser(trx, row.user_id);
          return trx
            .updateTable("runs")
            .set({ status: "queued", reservation_id: hold.handle, prior_charged: Number(row.charged ?? 0), charged: null, error: null, finished_at: null, worker_id: null, cancel_requested: false })
            .where("id", "=", row.id)
            .where("status", "=", row.status)
            .where("attempt", "=", row.attempt)
            .returningAll()
            .executeTakeFirst();
        });
        if (!resumed) throw new ServerError("run_not_resumable", `Run ${row.id} is already being resumed`);
        await queue.send<RunJob>(RUN_QUEUE, { runId: row.id }, { key: `${row.id}:${row.attempt}` }).catch(() => {});
        return runView(resumed);
      } catch (error) {
        // The slot (per run) and the hold (idempotent per attempt) are the same for every
        // concurrent resume of this attempt: while the caller that won goes on with them, they
        // are its and stay held. Otherwise (nobody won, or the winner already ended) they go back.
        const current = await db.selectFrom("runs").select(["reservation_id", "status"]).where("id", "=", row.id).executeTakeFirst().catch(() => undefined);
        const winnerHolds = handle !== undefined && current?.reservation_id === handle && (current.status === "queued" || current.status === "running");
        if (!winnerHolds) {
          if (handle) await releaseRunHold(spend, ledger, handle).catch(() => {});
          await slot.release().catch(() => {});
        }
        throw error;
      }
    },

    /**
     * Deletes a finished run: its row, agents and events, and its workspace unless the owner's
     * preference keeps workspaces (then the folder stays and the response says where). A queued
     * or running run is refused; cancel it first.
     */
    async remove(principal: Principal, runId: string): Promise<{ id: string; workspaceKept: boolean }> {
      const row = await load(principal, runId);
      const deleted = await db
        .deleteFrom("runs")
        .where("id", "=", row.id)
        .where("status", "in", ["succeeded", "failed", "cancelled", "interrupted"])
        .returning(["id", "user_id"])
        .executeTakeFirst();
      if (!deleted) throw new ServerError("run_not_finished", `Run ${row.id} is ${row.status}; cancel it before deleting`);
      const preference = await db.selectFrom("user_preferences").select("keep_workspaces").where("user_id", "=", deleted.user_id).executeTakeFirst();
      const keep = preference?.keep_workspaces === true;
      if (!keep) await rm(runFolders(config.workspacesDir, deleted.user_id, deleted.id).root, { recursive: true, force: true });
      return { id: deleted.id, workspaceKept: keep };
    },

    /**
     * Cancels a queued run at once (its hold released, its slot freed) or asks the worker of a
     * running one to stop; the worker settles what was used.
     */
    async cancel(principal: Principal, runId: string): Promise<RunView> {
      const row = await load(principal, runId);
      const queued = await db
        .updateTable("runs")
        .set(() => ({ status: "cancelled", cancel_requested: true, finished_at: new Date(), charged: sql<number>`prior_charged` }))
        .where("id", "=", row.id)
        .where("status", "=", "queued")
        .returningAll()
        .executeTakeFirst();
      if (queued) {
        await releaseRunHold(spend, ledger, queued.reservation_id);
        await slots.release(queued.id);
        await deps.bus.publish({ runId: queued.id, lastSeq: 0, ended: true });
        await deps.onRunEnded?.(queued.id);
        return runView(queued);
      }
      const running = await db
        .updateTable("runs")
        .set({ cancel_requested: true })
        .where("id", "=", row.id)
        .where("status", "=", "running")
        .returningAll()
        .executeTakeFirst();
      if (!running) throw new ServerError("run_not_cancellable", `Run ${row.id} already ${row.status}`);
      return runView(running);
    },
  };
}

export type RunService = ReturnType<typeof createRunService>;
