import { randomUUID } from "node:crypto";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { measureDirectory, type Ledger, type PriceList, type RunSlots, type Spend } from "@keen/gateway-kit";
import { sql, type Kysely } from "kysely";
import type { Logger } from "pino";
import type { ServerConfig } from "../config.js";
import type { RunState, ServerTables } from "../db/tables.js";
import { ServerError } from "../errors.js";
import type { EventBus } from "../events/event-bus.js";
import { RunEventLog, RunEventWriter } from "../events/event-log.js";
import type { ServerMetrics } from "../http/metrics.js";
import type { JobQueue } from "../queue/job-queue.js";
import { executeRun, runBranchOf, type AgentRecord, type ExecuteRunResult, type RunUsage } from "./execute-run.js";
import { uploadFolder } from "../uploads/unpack.js";
import { branchCommit, provisionCheckout, runFolders } from "./provision.js";
import { RUN_QUEUE, type RunJob, type RunRow } from "./run-service.js";
import { closeRunHold } from "./run-spend.js";

export interface RunWorkerDeps {
  db: Kysely<ServerTables>;
  config: ServerConfig;
  ledger: Ledger;
  spend: Spend;
  slots: RunSlots;
  queue: JobQueue;
  bus: EventBus;
  priceList: PriceList;
  logger: Logger;
  metrics: ServerMetrics;
  /** Told once a run reached a final state here (webhooks are enqueued from it). */
  onRunEnded?: (runId: string) => Promise<void>;
}

const json = <T>(value: unknown): T => (typeof value === "string" ? JSON.parse(value) : value) as T;

/**
 * Executes run jobs: claims the run row (one worker per run, however often the job is
 * delivered), provisions its checkout, runs agent-core, writes every event before it is
 * published, checkpoints the snapshot, heartbeats, and settles the run's credits once.
 *
 * @example
 * const worker = createRunWorker(deps);
 * await worker.start();
 * // …
 * await worker.stop();
 */
export function createRunWorker(deps: RunWorkerDeps) {
  const { db, config, ledger, spend, slots, queue, bus, priceList, logger, metrics } = deps;
  const workerId = `worker_${randomUUID()}`;
  const log = new RunEventLog(db);
  const active = new Map<string, { controller: AbortController; handingOver: boolean }>();
  let sweeper: NodeJS.Timeout | undefined;
  let stopping = false;

  /** Takes the run if it waits, or if its worker stopped heartbeating. One statement, so one winner. */
  async function claim(runId: string): Promise<RunRow | undefined> {
    const now = new Date();
    const stale = new Date(now.getTime() - config.staleAfterMs);
    return db
      .updateTable("runs")
      .set({ status: "running", worker_id: workerId, heartbeat_at: now, attempt: sql`attempt + 1`, started_at: sql`coalesce(started_at, ${now})` })
      .where("id", "=", runId)
      .where("cancel_requested", "=", false)
      .where((eb) => eb.or([eb("status", "=", "queued"), eb.and([eb("status", "=", "running"), eb("heartbeat_at", "<", stale)])]))
      .returningAll()
      .executeTakeFirst();
  }

  /**
   * Closes the run's hold once: settled at the price of its usage, or released when it failed
   * before reporting any (`usage` null). A repeat (an earlier attempt got this far) returns what
   * that first close charged.
   */
  async function settle(run: RunRow, usage: RunUsage | null): Promise<number> {
    // After a resume the usage is the whole run's; earlier attempts' settlements already paid part.
    const price = usage === null ? null : Math.max(0, priceList.priceUsage(run.model, usage) - Number(run.prior_charged ?? 0));
    return closeRunHold(spend, ledger, run.reservation_id, price);
  }

  async function saveAgents(runId: string, model: string, agents: AgentRecord[]): Promise<void> {
    if (agents.length === 0) return;
    await db
      .insertInto("run_agents")
      .values(
        agents.map((a) => ({
          run_id: runId,
          agent_id: a.id,
          parent_id: a.parentId,
          depth: a.depth,
          branch: a.branch,
          title: a.title,
          phase: a.phase,
          status: a.status,
          usage: JSON.stringify(a.usage),
          cost: priceList.priceUsage(model, a.usage),
        })),
      )
      .onConflict((oc) =>
        oc.columns(["run_id", "agent_id"]).doUpdateSet((eb) => ({
          phase: eb.ref("excluded.phase"),
          status: eb.ref("excluded.status"),
          usage: eb.ref("excluded.usage"),
          cost: eb.ref("excluded.cost"),
          branch: eb.ref("excluded.branch"),
        })),
      )
      .execute();
  }

  async function finish(run: RunRow, state: RunState, fields: { usage?: RunUsage; charged: number; summary?: string | null; error?: { code: string; message: string } | null; headCommit?: string | null }, lastSeq: number) {
    await db
      .updateTable("runs")
      .set({
        status: state,
        charged: fields.charged + Number(run.prior_charged ?? 0),
        usage: fields.usage ? JSON.stringify(fields.usage) : null,
        summary: fields.summary ?? null,
        error: fields.error ? JSON.stringify(fields.error) : null,
        ...(fields.headCommit ? { head_commit: fields.headCommit } : {}),
        finished_at: new Date(),
        heartbeat_at: new Date(),
      })
      .where("id", "=", run.id)
      .where("worker_id", "=", workerId)
      .execute();
    await slots.release(run.id).catch(() => {});
    await bus.publish({ runId: run.id, lastSeq, ended: true });
    metrics.creditsCharged.inc(fields.charged);
    await deps.onRunEnded?.(run.id);
  }

  /**
   * A new checkout counts against the user's `maxWorkspaceBytes` like an upload: past it, the
   * checkout is removed and the run fails `quota_exceeded` before the model is asked anything.
   */
  async function checkoutWithinQuota(userId: string, runRoot: string): Promise<void> {
    const limit = config.maxWorkspaceBytes;
    const used = await measureDirectory(join(config.workspacesDir, userId), { stopAbove: { bytes: limit } });
    if (used.bytes <= limit) return;
    await rm(runRoot, { recursive: true, force: true });
    throw new ServerError("quota_exceeded", `The repository takes the user's workspaces past their quota of ${limit} bytes`, { quota: "workspaceBytes", limit });
  }

  async function execute(runId: string): Promise<void> {
    if (stopping) throw new ServerError("unavailable", "worker is stopping");
    const run = await claim(runId);
    if (!run) return;
    const controller = new AbortController();
    const entry = { controller, handingOver: false };
    active.set(run.id, entry);
    metrics.runsActive.inc();
    const runLog = logger.child({ runId: run.id, attempt: run.attempt });
    const writer = new RunEventWriter(run.id, await log.nextSeq(run.id), log, bus, (events) => metrics.eventsWritten.inc(events.length));
    const heartbeat = setInterval(() => {
      void db
        .updateTable("runs")
        .set({ heartbeat_at: new Date() })
        .where("id", "=", run.id)
        .where("worker_id", "=", workerId)
        .returning("cancel_requested")
        .executeTakeFirst()
        .then((row) => {
          if (!row) {
            // Another worker took the run over (this one looked dead): stop without settling or
            // recording anything; the run is the other worker's now.
            entry.handingOver = true;
            controller.abort(new Error("lost"));
          } else if (row.cancel_requested) controller.abort(new Error("cancelled"));
        })
        .catch((error) => runLog.warn({ err: error }, "heartbeat failed"));
      void slots.renew(run.id).catch(() => {});
    }, config.heartbeatMs);
    heartbeat.unref();
    try {
      const source = json<{ url: string; ref?: string } | { path: string } | { uploadId: string }>(run.repo);
      let repo: { url: string; ref?: string } | { path: string };
      if ("uploadId" in source) {
        // The upload's own fresh repository (made by the server, never the uploaded .git).
        const upload = await db.selectFrom("uploads").select(["user_id"]).where("id", "=", source.uploadId).where("team_id", "=", run.team_id).executeTakeFirst();
        if (!upload) throw new ServerError("repository_unavailable", "The upload this run starts from is gone");
        repo = { path: uploadFolder(config.workspacesDir, upload.user_id, source.uploadId) };
      } else repo = source;
      const folders = runFolders(config.workspacesDir, run.user_id, run.id);
      const resuming = run.snapshot !== null;
      const head = await provisionCheckout(folders, repo, resuming);
      if (!resuming) await checkoutWithinQuota(run.user_id, folders.root);
      // The run works on its own branch from the checkout's HEAD (the base commit); its result
      // (diff, archive) is that branch against the base. A run recorded before run branches
      // resumes on the branch it recorded.
      const resultBranch = resuming ? (run.branch ?? head.branch) : runBranchOf(run.id);
      if (!resuming) {
        await db.updateTable("runs").set({ base_commit: head.baseCommit, branch: resultBranch }).where("id", "=", run.id).execute();
      }
      const options = json<{ maxDepth?: number; maxChildren?: number; validate?: string; onConflict?: "resolve" | "rollback" }>(run.options);
      let result: ExecuteRunResult;
      result = await executeRun({
        runId: run.id,
        checkout: folders.checkout,
        worktreesDir: folders.worktrees,
        vision: run.vision,
        model: { id: run.model, baseUrl: config.modelBaseUrl, apiKey: config.modelApiKey, maxRetries: config.modelMaxRetries },
        options,
        snapshot: run.snapshot === null ? undefined : json(run.snapshot),
        sandbox: config.sandbox,
        signal: controller.signal,
        onEvent: (event) => {
          writer.write(event as never);
          if (event.type === "model.usage") metrics.tokens.inc(event.usage.inputTokens + event.usage.outputTokens + event.usage.cacheCreationInputTokens + event.usage.cacheReadInputTokens);
        },
        onSnapshot: ({ json: snapshot, agents }) => {
          // A snapshot taken after a shutdown abort records agents as aborted; the next worker
          // must resume from the last one before it.
          if (entry.handingOver) return;
          writer.after(async () => {
            await db.updateTable("runs").set({ snapshot, heartbeat_at: new Date() }).where("id", "=", run.id).where("worker_id", "=", workerId).execute();
            await saveAgents(run.id, run.model, agents);
          });
        },
      });
      await writer.flush();
      if (entry.handingOver) {
        // This process is stopping: hand the run back, checkpointed, for the next worker.
        await db.updateTable("runs").set({ status: "queued", worker_id: null }).where("id", "=", run.id).where("worker_id", "=", workerId).execute();
        return;
      }
      await saveAgents(run.id, run.model, result.agents);
      const charged = await settle(run, result.usage);
      const cancelled = result.status === "aborted";
      await finish(
        run,
        result.status === "success" ? "succeeded" : cancelled ? "cancelled" : result.status === "interrupted" ? "interrupted" : "failed",
        { usage: result.usage, charged, summary: result.summary, error: result.error ?? null, headCommit: await branchCommit(folders.checkout, resultBranch).catch(() => null) },
        writer.lastSeq,
      );
      runLog.info({ status: result.status, charged }, "run finished");
    } catch (error) {
      await writer.flush().catch(() => {});
      if (entry.handingOver) return;
      const reason = error instanceof ServerError ? { code: error.code, message: error.message } : { code: "internal_error", message: "The run stopped on a server error" };
      runLog.error({ err: error }, "run failed");
      const charged = await settle(run, null).catch(() => 0);
      await finish(run, "failed", { charged, error: reason }, writer.lastSeq).catch((e) => runLog.error({ err: e }, "could not record the failure"));
    } finally {
      clearInterval(heartbeat);
      active.delete(run.id);
      metrics.runsActive.dec();
    }
  }

  /** Enqueues runs nobody is executing: queued ones (a lost job) and ones whose worker went quiet. */
  async function recover(): Promise<number> {
    const stale = new Date(Date.now() - config.staleAfterMs);
    const rows = await db
      .selectFrom("runs")
      .select("id")
      .where((eb) => eb.or([eb("status", "=", "queued"), eb.and([eb("status", "=", "running"), eb("heartbeat_at", "<", stale)])]))
      .where("cancel_requested", "=", false)
      .limit(500)
      .execute();
    for (const row of rows) await queue.send<RunJob>(RUN_QUEUE, { runId: row.id }, { key: row.id });
    return rows.length;
  }

  return {
    workerId,
    execute,
    recover,
    async start(): Promise<void> {
      if (config.workers === 0) return;
      await queue.work<RunJob>(RUN_QUEUE, config.workers, (job) => execute(job.runId));
      await recover();
      sweeper = setInterval(() => {
        void recover().catch((error) => logger.warn({ err: error }, "recovery sweep failed"));
        // Holds nobody closed within their time (a run row lost mid-create, say): wallet and budgets back together.
        void spend.sweepExpired().catch((error) => logger.warn({ err: error }, "spend sweep failed"));
      }, config.staleAfterMs);
      sweeper.unref();
    },
    /** Stops taking runs; running ones are checkpointed and handed back for another worker. */
    async stop(): Promise<void> {
      stopping = true;
      if (sweeper) clearInterval(sweeper);
      for (const entry of active.values()) {
        entry.handingOver = true;
        entry.controller.abort(new Error("server stopping"));
      }
    },
    get activeRuns(): number {
      return active.size;
    },
  };
}

export type RunWorker = ReturnType<typeof createRunWorker>;
