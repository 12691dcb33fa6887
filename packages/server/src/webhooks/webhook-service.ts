import { randomUUID } from "node:crypto";
import type { Principal } from "@keen/gateway-kit";
import { sql, type Kysely, type Selectable } from "kysely";
import type { Logger } from "pino";
import type { ServerConfig } from "../config.js";
import type { RunState, ServerTables, WebhooksTable } from "../db/tables.js";
import { ServerError } from "../errors.js";
import { isAccountErased, lockLiveUser } from "../privacy/live-user.js";
import type { JobQueue } from "../queue/job-queue.js";
import { parseWebhookUrl, resolveWebhookTarget } from "./address-policy.js";
import { deliverWebhook } from "./deliver.js";
import { newWebhookSecret, signWebhook } from "./signing.js";
import type { CreateWebhookBody, ListDeliveriesQuery, WebhookEvent } from "./webhook-input.js";

export const WEBHOOK_QUEUE = "keen-webhooks";

/** A delivery job: attempt `attempt` of message `messageId`. */
export interface WebhookJob {
  messageId: string;
  attempt: number;
}

/** Endpoints one team may register. */
export const MAX_WEBHOOKS_PER_TEAM = 20;
/** Bytes of a receiver's answer kept in the deliveries log. */
export const RESPONSE_BODY_CAP = 1024;
const MAX_RETRY_DELAY_MS = 6 * 3600_000;
/** Deliveries a process makes at once. */
const DELIVERY_CONCURRENCY = 4;

const EVENT_OF_STATE: Partial<Record<RunState, WebhookEvent>> = {
  succeeded: "run.completed",
  failed: "run.failed",
  cancelled: "run.cancelled",
  interrupted: "run.interrupted",
};

/** How far back the sweep looks for ended runs whose webhook messages were never written. */
const FINISHED_LOOKBACK_MS = 24 * 60 * 60 * 1000;

const ID = /^wh_[0-9a-f-]{36}$/;
const json = <T>(value: unknown): T => (typeof value === "string" ? JSON.parse(value) : value) as T;
const iso = (value: Date | string | null) => (value === null ? null : new Date(value).toISOString());

export interface WebhookView {
  id: string;
  url: string;
  events: string[];
  createdAt: string;
}

function view(row: Selectable<WebhooksTable>): WebhookView {
  return { id: row.id, url: row.url, events: json<string[]>(row.events), createdAt: iso(row.created_at)! };
}

export interface WebhookServiceDeps {
  db: Kysely<ServerTables>;
  queue: JobQueue;
  config: ServerConfig;
  logger: Logger;
}

/**
 * Outbound webhooks: endpoints per team, one message per (endpoint, run event) with a stable
 * `webhook-id`, deliveries signed in the Standard Webhooks format from the job queue, retried
 * with exponential backoff up to `webhookMaxAttempts`, every attempt logged.
 *
 * Delivery is at least once: a message is marked delivered only after a 2xx, and a worker
 * that dies mid-attempt leaves it pending for the sweep to send again (same `webhook-id`, so
 * receivers deduplicate on it).
 *
 * @example
 * const webhooks = createWebhookService({ db, queue, config, logger });
 * await webhooks.start();
 * await webhooks.runEnded("run_…");
 */
export function createWebhookService(deps: WebhookServiceDeps) {
  const { db, queue, config, logger } = deps;
  const policy = { allowPrivate: config.webhookAllowPrivate };
  let sweeper: NodeJS.Timeout | undefined;

  async function load(principal: Principal, id: string): Promise<Selectable<WebhooksTable>> {
    // Another team's endpoint and a missing one look the same.
    if (!principal.teamId || !ID.test(id)) throw new ServerError("not_found", "Webhook not found");
    const row = await db.selectFrom("webhooks").selectAll().where("id", "=", id).where("team_id", "=", principal.teamId).executeTakeFirst();
    if (!row) throw new ServerError("not_found", "Webhook not found");
    return row;
  }

  const retryDelay = (attempt: number) => {
    const base = Math.min(config.webhookRetryBaseMs * 4 ** (attempt - 1), MAX_RETRY_DELAY_MS);
    // Up to 10% jitter so endpoints that failed together are not retried in lockstep.
    return Math.round(base * (1 + Math.random() * 0.1));
  };

  /** One attempt of one message; the job for attempt N runs only while the message has N-1 done. */
  async function attempt(job: WebhookJob): Promise<void> {
    const now = new Date();
    // Claim the attempt (one winner however often the job is delivered) and hold it for a lease
    // past the request deadline, after which the sweep may try again.
    const message = await db
      .updateTable("webhook_messages")
      .set({ attempts: job.attempt, next_attempt_at: new Date(now.getTime() + config.webhookTimeoutMs + 60_000) })
      .where("id", "=", job.messageId)
      .where("status", "=", "pending")
      .where("attempts", "=", job.attempt - 1)
      .returningAll()
      .executeTakeFirst();
    if (!message) return;
    const hook = await db.selectFrom("webhooks").select(["url", "secret"]).where("id", "=", message.webhook_id).executeTakeFirst();
    if (!hook) return;
    const timestamp = Math.floor(Date.now() / 1000);
    const result = await deliverWebhook(
      hook.url,
      { "webhook-id": message.id, "webhook-timestamp": String(timestamp), "webhook-signature": signWebhook(hook.secret, message.id, timestamp, message.body) },
      message.body,
      { ...policy, timeoutMs: config.webhookTimeoutMs, maxResponseBytes: RESPONSE_BODY_CAP },
    );
    await db
      .insertInto("webhook_deliveries")
      .values({
        id: `whd_${randomUUID()}`,
        message_id: message.id,
        webhook_id: message.webhook_id,
        attempt: job.attempt,
        status_code: result.statusCode,
        duration_ms: result.durationMs,
        error: result.error,
        response_body: result.responseBody,
        at: new Date(),
      })
      .execute()
      .catch((error) => {
        // The endpoint was deleted meanwhile (its messages and log went with it).
        logger.debug({ err: error, messageId: message.id }, "delivery not logged");
      });
    if (result.error === null) {
      await db.updateTable("webhook_messages").set({ status: "delivered", next_attempt_at: null }).where("id", "=", message.id).execute();
      return;
    }
    if (job.attempt >= config.webhookMaxAttempts) {
      await db.updateTable("webhook_messages").set({ status: "failed", next_attempt_at: null }).where("id", "=", message.id).execute();
      logger.warn({ messageId: message.id, webhookId: message.webhook_id, attempts: job.attempt, error: result.error }, "webhook delivery gave up");
      return;
    }
    const delayMs = retryDelay(job.attempt);
    await db.updateTable("webhook_messages").set({ next_attempt_at: new Date(Date.now() + delayMs) }).where("id", "=", message.id).execute();
    // A lost send is picked up by the sweep once the message is overdue.
    await queue.send<WebhookJob>(WEBHOOK_QUEUE, { messageId: message.id, attempt: job.attempt + 1 }, { key: `${message.id}:${job.attempt + 1}`, delayMs }).catch((error) => logger.warn({ err: error }, "webhook retry not enqueued"));
  }

  /**
   * Called once a run reached a final state: one message per subscribed endpoint of the run's
   * team, then a job each. Reporting the same end twice adds nothing. Never throws (a run's
   * end is not undone by a webhook problem); failures are logged.
   */
  async function runEnded(runId: string): Promise<void> {
    try {
      const run = await db.selectFrom("runs").selectAll().where("id", "=", runId).executeTakeFirst();
      const event = run ? EVENT_OF_STATE[run.status] : undefined;
      if (!run || !event) return;
      const hooks = await db.selectFrom("webhooks").select(["id", "events", "created_at"]).where("team_id", "=", run.team_id).execute();
      // An endpoint registered after the run ended is not owed its end.
      const endedAt = run.finished_at ? new Date(run.finished_at).getTime() : Date.now();
      const targets = hooks.filter((h) => json<string[]>(h.events).includes(event) && new Date(h.created_at).getTime() <= endedAt);
      if (targets.length === 0) return;
      const now = new Date();
      const body = JSON.stringify({
        type: event,
        timestamp: now.toISOString(),
        data: {
          run: {
            id: run.id,
            status: run.status,
            teamId: run.team_id,
            userId: run.user_id,
            model: run.model,
            attempt: run.attempt,
            branch: run.branch,
            baseCommit: run.base_commit,
            headCommit: run.head_commit,
            summary: run.summary,
            error: run.error === null ? null : json(run.error),
            usage: run.usage === null ? null : json(run.usage),
            cost: run.charged === null ? null : Number(run.charged),
            createdAt: iso(run.created_at),
            startedAt: iso(run.started_at),
            finishedAt: iso(run.finished_at),
          },
        },
      });
      const subject = `run:${run.id}:${run.attempt}`;
      // The body names the run's user: written only while that user is live and the run still
      // there (an erasure that began after the run was read deletes both and would not see these).
      const inserted = await db.transaction().execute(async (trx) => {
        await lockLiveUser(trx, run.user_id);
        if (!(await trx.selectFrom("runs").select("id").where("id", "=", run.id).executeTakeFirst())) return [];
        return trx
          .insertInto("webhook_messages")
          .values(targets.map((t) => ({ id: `msg_${randomUUID()}`, webhook_id: t.id, team_id: run.team_id, event_type: event, subject, body, status: "pending" as const, next_attempt_at: now, created_at: now })))
          .onConflict((oc) => oc.columns(["webhook_id", "event_type", "subject"]).doNothing())
          .returning("id")
          .execute();
      }).catch((error) => {
        if (isAccountErased(error)) return [];
        throw error;
      });
      for (const message of inserted) await queue.send<WebhookJob>(WEBHOOK_QUEUE, { messageId: message.id, attempt: 1 }, { key: `${message.id}:1` });
    } catch (error) {
      logger.error({ err: error, runId }, "webhooks for a finished run not enqueued");
    }
  }

  /**
   * Writes the messages of runs that ended without them: a process that died between marking
   * its run final and `runEnded` would otherwise lose the event. Looks back `FINISHED_LOOKBACK_MS`;
   * an endpoint registered after the run ended is not owed it.
   */
  async function enqueueMissed(graceMs: number): Promise<void> {
    const until = new Date(Date.now() - graceMs);
    const since = new Date(Date.now() - FINISHED_LOOKBACK_MS);
    for (const [state, event] of Object.entries(EVENT_OF_STATE) as Array<[RunState, WebhookEvent]>) {
      const rows = await db
        .selectFrom("runs as r")
        .innerJoin("webhooks as w", "w.team_id", "r.team_id")
        .select("r.id")
        .distinct()
        .where("r.status", "=", state)
        .where("r.finished_at", ">=", since)
        .where("r.finished_at", "<=", until)
        .whereRef("w.created_at", "<=", "r.finished_at")
        .where(sql<boolean>`cast(w.events as text) like ${`%"${event}"%`}`)
        .where(({ not, exists, selectFrom }) =>
          not(exists(selectFrom("webhook_messages as m").select("m.id").whereRef("m.webhook_id", "=", "w.id").where("m.event_type", "=", event).where(sql<boolean>`m.subject = 'run:' || r.id || ':' || cast(r.attempt as text)`))),
        )
        .limit(200)
        .execute();
      for (const row of rows) await runEnded(row.id);
    }
  }

  /**
   * Sends jobs for pending messages whose next attempt is overdue (lost jobs, crashed attempts, a
   * restart), after writing the messages of runs that ended without them.
   */
  async function sweep(overdueMs: number): Promise<number> {
    await enqueueMissed(overdueMs);
    const rows = await db
      .selectFrom("webhook_messages")
      .select(["id", "attempts"])
      .where("status", "=", "pending")
      .where("next_attempt_at", "<=", new Date(Date.now() - overdueMs))
      .limit(500)
      .execute();
    for (const row of rows) await queue.send<WebhookJob>(WEBHOOK_QUEUE, { messageId: row.id, attempt: row.attempts + 1 }, { key: `${row.id}:${row.attempts + 1}` });
    return rows.length;
  }

  return {
    async register(principal: Principal, body: CreateWebhookBody): Promise<WebhookView & { secret: string }> {
      if (!principal.teamId) throw new ServerError("forbidden", "Choose a team before registering webhooks");
      const url = parseWebhookUrl(body.url);
      await resolveWebhookTarget(url, policy);
      const teamId = principal.teamId;
      const secret = newWebhookSecret();
      const row = await db.transaction().execute(async (trx) => {
        // Only for a live user (the erasure's row lock), and the team's count and the insert
        // under the team's row lock, so endpoints registered at once cannot pass the cap together.
        await lockLiveUser(trx, principal.userId);
        await (trx as Kysely<any>).selectFrom("teams").select("id").where("id", "=", teamId).forUpdate().executeTakeFirst();
        const count = await trx.selectFrom("webhooks").select((eb) => eb.fn.countAll<string>().as("n")).where("team_id", "=", teamId).executeTakeFirstOrThrow();
        if (Number(count.n) >= MAX_WEBHOOKS_PER_TEAM) throw new ServerError("webhook_limit", `A team has at most ${MAX_WEBHOOKS_PER_TEAM} webhooks`);
        return trx
          .insertInto("webhooks")
          .values({ id: `wh_${randomUUID()}`, team_id: teamId, user_id: principal.userId, url: url.href, events: JSON.stringify(body.events), secret, created_at: new Date() })
          .returningAll()
          .executeTakeFirstOrThrow();
      });
      return { ...view(row), secret };
    },

    async list(principal: Principal): Promise<{ webhooks: WebhookView[] }> {
      if (!principal.teamId) return { webhooks: [] };
      const rows = await db.selectFrom("webhooks").selectAll().where("team_id", "=", principal.teamId).orderBy("created_at", "desc").orderBy("id").execute();
      return { webhooks: rows.map(view) };
    },

    async remove(principal: Principal, id: string): Promise<{ id: string; deleted: true }> {
      const row = await load(principal, id);
      await db.deleteFrom("webhooks").where("id", "=", row.id).where("team_id", "=", row.team_id).execute();
      return { id: row.id, deleted: true };
    },

    async deliveries(principal: Principal, id: string, query: ListDeliveriesQuery) {
      const row = await load(principal, id);
      const rows = await db
        .selectFrom("webhook_deliveries as d")
        .innerJoin("webhook_messages as m", "m.id", "d.message_id")
        .select(["d.id", "d.message_id", "m.event_type", "m.status", "d.attempt", "d.status_code", "d.duration_ms", "d.error", "d.response_body", "d.at"])
        .where("d.webhook_id", "=", row.id)
        .orderBy("d.at", "desc")
        .orderBy("d.attempt", "desc")
        .limit(query.limit)
        .execute();
      return {
        deliveries: rows.map((d) => ({
          id: d.id,
          webhookId: d.message_id,
          event: d.event_type,
          messageStatus: d.status,
          attempt: d.attempt,
          statusCode: d.status_code,
          durationMs: d.duration_ms,
          error: d.error,
          responseBody: d.response_body,
          at: iso(d.at)!,
        })),
      };
    },

    runEnded,
    attempt,
    sweep,

    /** Takes delivery jobs (when this process executes work) and re-sends overdue messages. */
    async start(): Promise<void> {
      if (config.workers === 0) return;
      await queue.work<WebhookJob>(WEBHOOK_QUEUE, DELIVERY_CONCURRENCY, attempt);
      // On start every pending message that is due (an in-process queue forgot its jobs).
      await sweep(0);
      sweeper = setInterval(() => void sweep(30_000).catch((error) => logger.warn({ err: error }, "webhook sweep failed")), 60_000);
      sweeper.unref();
    },

    stop(): void {
      if (sweeper) clearInterval(sweeper);
    },
  };
}

export type WebhookService = ReturnType<typeof createWebhookService>;
