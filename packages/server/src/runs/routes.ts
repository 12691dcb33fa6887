import type { Router } from "@koa/router";
import { requireScope, screenInstructions, validate, type AuditSink, type Principal } from "@keen/gateway-kit";
import type { ParameterizedContext } from "koa";
import { ServerError } from "../errors.js";
import { serveEventStream, type StreamDeps } from "../events/stream.js";
import { bundleStream, diffStream, runFolders } from "./provision.js";
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
export function mountRunRoutes(router: Router, deps: { runs: RunService; audit: AuditSink; stream: StreamDeps; workspacesDir: string }): void {
  const { runs } = deps;
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
    ctx.body = await diffStream(folders.checkout, run.base_commit, run.head_commit);
  });

  router.get("/runs/:id/archive", requireScope(RUN_SCOPES.read), async (ctx) => {
    const run = await runs.load(principalOf(ctx), ctx.params.id!);
    if (!run.head_commit || !["succeeded", "failed", "cancelled", "interrupted"].includes(run.status)) throw new ServerError("run_not_finished", "The run has no result to archive yet");
    const folders = runFolders(deps.workspacesDir, run.user_id, run.id);
    // Streamed from git as the client reads it; a client that goes away ends git with it.
    const bundle = await bundleStream(folders.checkout, run.branch ?? "HEAD", run.head_commit);
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
