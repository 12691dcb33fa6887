import type { Middleware, ParameterizedContext } from "koa";
import type { AuditEventInput, AuditSink } from "./audit-sink.js";
import { ConfigError } from "../errors.js";
import { errorStatus, errorStatuses, type ErrorStatuses } from "../http-error.js";
import { requestIp } from "../http/index.js";

export interface AuditRequestsOptions {
  /** Requests not to record, e.g. health checks. */
  skip?: (ctx: ParameterizedContext) => boolean;
  /** Called when the sink fails; the response is not affected. Default: rethrow nothing, drop silently. */
  onError?: (error: unknown, event: AuditEventInput) => void;
  /** The host's own codes, as given to `errorHandler({ statuses })`, so the log and the response agree. */
  statuses?: ErrorStatuses;
}

function resultOf(status: number): AuditEventInput["result"] {
  if (status === 401 || status === 403) return "denied";
  return status >= 400 ? "failure" : "success";
}

/**
 * Records every API call below it in an audit sink, after the response status is known (errors
 * included): who (`actorId`, the tenant from the principal), what (`action`: the method and the
 * matched route template, e.g. `POST /projects/:id/runs`, or `(unmatched)`), the target (the
 * concrete path), the result (`success`, `failure`, or `denied` for 401/403), the client ip and the
 * request id, with the status and duration in `details`. The query string is never recorded.
 *
 * @example
 * const audit = createAuditLog(db);
 * app.use(errorHandler());
 * app.use(auditRequests(audit, { skip: (ctx) => ctx.path === "/health" }));
 * app.use(authenticate({ service })).use(router.routes());
 */
export function auditRequests(sink: AuditSink, options: AuditRequestsOptions = {}): Middleware {
  if (typeof sink?.record !== "function") throw new ConfigError("auditRequests needs an AuditSink");
  const statuses = options.statuses ?? errorStatuses;
  return async (ctx, next) => {
    if (options.skip?.(ctx)) return next();
    const started = performance.now();
    let status = 500;
    try {
      await next();
      status = ctx.status;
    } catch (error) {
      // The status errorHandler() will answer with, so the log and the response agree.
      status = errorStatus(error, statuses);
      throw error;
    } finally {
      const principal = ctx.state.principal;
      const route = (ctx as { _matchedRoute?: unknown })._matchedRoute;
      const event: AuditEventInput = {
        tenantId: principal?.teamId ?? principal?.userId ?? null,
        actorId: principal?.userId ?? null,
        action: `${ctx.method} ${typeof route === "string" ? route : "(unmatched)"}`,
        target: ctx.path,
        result: resultOf(status),
        ip: requestIp(ctx) ?? null,
        requestId: ctx.state.requestId ?? (ctx.get("x-request-id") || null),
        details: { status, ms: Math.round(performance.now() - started), ...(principal?.apiKeyId ? { apiKeyId: principal.apiKeyId } : {}) },
      };
      try {
        await sink.record(event);
      } catch (error) {
        options.onError?.(error, event);
      }
    }
  };
}
