import { randomUUID } from "node:crypto";
import { errorHeaders, errorStatus, GatewayError } from "@keen/gateway-kit";
import type { Middleware } from "koa";
import type { Logger } from "pino";
import { ServerError, statusOf } from "../errors.js";
import type { ServerMetrics } from "./metrics.js";

declare module "koa" {
  interface DefaultState {
    /** A logger that stamps every line with the request id. */
    log?: Logger;
  }
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
/** Statuses of a coded gateway-kit error that reach the client as they are: another service failed, not this one. */
const DEPENDENCY_FAILURES = new Set([502, 503, 504]);

/** The one error body: `{ error: { code, message, details?, requestId } }`. */
export interface ServerErrorBody {
  error: { code: string; message: string; details?: Record<string, unknown>; requestId: string };
}

function toError(error: unknown): { status: number; code: string; message: string; details?: Record<string, unknown>; headers?: Record<string, string> } {
  if (error instanceof ServerError) return { status: statusOf(error.code), code: error.code, message: error.message, ...(error.details ? { details: error.details } : {}) };
  // gateway-kit's errors (HttpError included) answer with the status its one table gives their code:
  // a 4xx, or a failed dependency (502 a mail relay or a provider refused, 503/504 one is out of
  // reach), whose code and message gateway-kit wrote for the client. Any other 5xx is masked.
  const status = errorStatus(error);
  if (error instanceof GatewayError && (status < 500 || DEPENDENCY_FAILURES.has(status))) {
    return { status, code: error.code, message: error.message, ...(error.details ? { details: error.details } : {}), headers: errorHeaders(error) };
  }
  if (status < 500) {
    const exposed = (error as { expose?: boolean }).expose;
    return { status, code: status === 413 ? "payload_too_large" : status === 415 ? "unsupported_media_type" : "bad_request", message: exposed ? String((error as Error).message) : "Bad request" };
  }
  return { status: 500, code: "internal_error", message: "Internal server error" };
}

/**
 * The outermost middleware: a request id (a well-formed `X-Request-Id` is kept, otherwise one
 * is made), a child logger carrying it, one log line per request, the latency metric, and the
 * error edge that maps domain codes to statuses and renders the one error body with the id.
 *
 * @example
 * app.use(edge({ logger, metrics }));
 */
export function edge(options: { logger: Logger; metrics: ServerMetrics }): Middleware {
  return async (ctx, next) => {
    const incoming = ctx.get("x-request-id");
    const requestId = REQUEST_ID.test(incoming) ? incoming : randomUUID();
    ctx.state.requestId = requestId;
    ctx.set("X-Request-Id", requestId);
    const log = options.logger.child({ requestId });
    ctx.state.log = log;
    const started = performance.now();
    try {
      await next();
      // Routers with their own error handler (gateway-kit's auth routes) answer in the same
      // shape; stamp the request id on theirs too.
      const body = ctx.body as { error?: Record<string, unknown> } | undefined;
      if (ctx.status >= 400 && body && typeof body === "object" && body.error && typeof body.error === "object" && !("requestId" in body.error)) {
        ctx.body = { ...body, error: { ...body.error, requestId } };
      }
    } catch (error) {
      const mapped = toError(error);
      if (mapped.status >= 500) log.error({ err: error }, "request failed");
      ctx.status = mapped.status;
      for (const [name, value] of Object.entries(mapped.headers ?? {})) ctx.set(name, value);
      const body: ServerErrorBody = { error: { code: mapped.code, message: mapped.message, ...(mapped.details ? { details: mapped.details } : {}), requestId } };
      ctx.body = body;
    } finally {
      const seconds = (performance.now() - started) / 1000;
      const route = (ctx as { _matchedRoute?: string })._matchedRoute ?? "(unmatched)";
      options.metrics.httpDuration.observe({ method: ctx.method, route: String(route), status: String(ctx.status) }, seconds);
      log.info({ method: ctx.method, route, status: ctx.status, ms: Math.round(seconds * 1000) }, "request");
    }
  };
}
