import type { Router } from "@koa/router";
import { requireScope, screenInstructions, validate, type AuditSink, type Principal } from "@keen/gateway-kit";
import type { Readable } from "node:stream";
import type { ParameterizedContext } from "koa";
import { ServerError } from "../errors.js";
import { serveEventStream, type StreamDeps } from "../events/stream.js";
import type { StreamSlots } from "../events/stream-slots.js";
import { bundleStream, diffStream, runFolders, type DownloadOptions } from "./provision.js";
import { CreateRunBody, ListRunsQuery } from "./run-input.js";
import type { RunService } from "./run-service.js";
import { jsonBody } from "../http/json-body.js";

/** API-key scopes and role permissions that guard runs (gateway-kit's names for agent work). */
export const RUN_SCOPES = { read: "sessions:read", write: "sessions:write" } as const;

function principalOf(ctx: ParameterizedContext): Principal {
  const principal = ctx.state.principal;
  if (!principal) throw new ServerError("forbidden", "Authentication required");
  return principal;
}

/**
 * The run routes, mounted on the authenticated `/v1` router. Each follows the pipeline:
 * (authenticated, rate-limited, audited by the router) → validate → screen the vision →
 * slot and credit reservation in `RunService.create`.
 */
export function mountRunRoutes(
  router: Router,
  deps: { runs: RunService; audit: AuditSink; stream: StreamDeps; workspacesDir: string; downloads: { slots: StreamSlots; stallMs: number } },
): void {
  const { runs } = deps;
  /**
   * Serves a result download under one of the caller's download slots (each holds a git
   * process): 429 `too_many_downloads` past the caps; the slot is given back when the response
   * stream closes, however it ends, or at once if git never started.
   */
  const download = async (ctx: ParameterizedContext, open: (options: DownloadOptions) => Promise<Readable>): Promise<Readable> => {
    const release = deps.downloads.slots.acquire(principalOf(ctx).userId);
    try {
      const stream = await open({ stallMs: deps.downloads.stallMs });
      stream.once("close", release);
      // A download that fails after its first bytes (git failed, or its reader stalled) cannot
      // answer with an error any more: the connection is cut, so the client sees it incomplete
      // rather than waiting on a response that never ends.
      stream.once("error", () => ctx.res.destroy());
      return stream;
    } catch (error) {
      release();
      throw error;
    }
  };
  const json = jsonBody({ limit: 256 * 1024 });

  router.post(
    "/runs",
    requireScope(RUN_SCOPES.write),
    json,
    validate({ body: CreateRunBody }),
    screenInstructions({ audit: deps.audit, text: (ctx) => (ctx.state.validated?.body as CreateRunBody | undefined)?.vision }),
    async (ctx) => {
      const run = await runs.create(principalOf(ctx), ctx.state.validated!.body as CreateRunBody);
      ctx.status = 202;
      ctx.set("Location", `/v1/runs/${run.id}`);
      ctx.body = run;
    },
  );

  router.get("/runs", requireScope(RUN_SCOPES.read), validate({ query: ListRunsQuery }), async (ctx) => {
    ctx.body = await runs.list(principalOf(ctx), ctx.state.validated!.query as { limit: number; cursor?: string });
  });

  router.get("/runs/:id", requireScope(RUN_SCOPES.read), async (ctx) => {
    ctx.body = await runs.get(principalOf(ctx), ctx.params.id!);
  });

  router.post("/runs/:id/cancel", requireScope(RUN_SCOPES.write), async (ctx) => {
    ctx.status = 202;
    ctx.body = await runs.cancel(principalOf(ctx), ctx.params.id!);
  });

  router.post("/runs/:id/resume", requireScope(RUN_SCOPES.write), async (ctx) => {
    ctx.status = 202;
    ctx.body = await runs.resume(principalOf(ctx), ctx.params.id!);
  });

  router.get("/runs/:id/diff", requireScope(RUN_SCOPES.read), async (ctx) => {
    const run = await runs.load(principalOf(ctx), ctx.params.id!);
    if (!run.base_commit || !run.head_commit) throw new ServerError("run_not_finished", "The run has no result to diff yet");
    const folders = runFolders(deps.workspacesDir, run.user_id, run.id);
    ctx.type = "text/x-diff; charset=utf-8";
    ctx.body = await download(ctx, (options) => diffStream(folders.checkout, run.base_commit!, run.head_commit!, options));
  });

  router.get("/runs/:id/archive", requireScope(RUN_SCOPES.read), async (ctx) => {
    const run = await runs.load(principalOf(ctx), ctx.params.id!);
    if (!run.head_commit || !["succeeded", "failed", "cancelled", "interrupted"].includes(run.status)) throw new ServerError("run_not_finished", "The run has no result to archive yet");
    const folders = runFolders(deps.workspacesDir, run.user_id, run.id);
    // Streamed from git as the client reads it; a client that goes away ends git with it.
    const bundle = await download(ctx, (options) => bundleStream(folders.checkout, run.branch ?? "HEAD", run.head_commit!, options));
    ctx.type = "application/x-git-bundle";
    ctx.attachment(`${run.id}.bundle`);
    ctx.body = bundle;
  });

  router.delete("/runs/:id", requireScope(RUN_SCOPES.write), async (ctx) => {
    ctx.body = await runs.remove(principalOf(ctx), ctx.params.id!);
  });

  router.get("/runs/:id/events", requireScope(RUN_SCOPES.read), async (ctx) => {
    await serveEventStream(ctx, deps.stream, principalOf(ctx), ctx.params.id!);
  });
}
