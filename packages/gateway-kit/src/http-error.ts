import type { Middleware } from "koa";

/**
 * An error with an HTTP status and a stable machine-readable code. `errorHandler()` renders it
 * as `{ error: { code, message, details? } }`; any other error becomes a 500 with no stack trace.
 *
 * @example
 * throw new HttpError(403, "forbidden", "Missing permission sessions:write", { missing: "sessions:write" });
 */
export class HttpError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details: Record<string, unknown> | undefined;
  /** Extra response headers, e.g. `Retry-After` or `WWW-Authenticate`. */
  readonly headers: Record<string, string>;
  constructor(
    status: number,
    code: string,
    message: string,
    details?: Record<string, unknown>,
    headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "HttpError";
    this.status = status;
    this.code = code;
    this.details = details;
    this.headers = headers;
  }
}

export interface ErrorBody {
  error: { code: string; message: string; details?: Record<string, unknown> };
}

export interface ErrorHandlerOptions {
  /** Called for unexpected (500) errors, e.g. to log them. */
  onUnexpected?: (error: unknown) => void;
}

/**
 * Renders every error below it as one JSON shape with the right status.
 * Mount it first.
 *
 * @example
 * app.use(errorHandler({ onUnexpected: (e) => logger.error(e) }));
 */
export function errorHandler(options: ErrorHandlerOptions = {}): Middleware {
  return async (ctx, next) => {
    try {
      await next();
    } catch (error) {
      const body = toErrorBody(error);
      ctx.status = body.status;
      if (error instanceof HttpError) {
        for (const [name, value] of Object.entries(error.headers)) ctx.set(name, value);
      } else if (body.status >= 500) {
        options.onUnexpected?.(error);
      }
      ctx.body = body.body;
    }
  };
}

/**
 * The status `errorHandler()` answers a thrown error with: an `HttpError`'s own, the 4xx that
 * koa and its body parsers attach to theirs, and 500 for everything else.
 */
export function errorStatus(error: unknown): number {
  if (error instanceof HttpError) return error.status;
  const status = (error as { status?: unknown } | null)?.status;
  return typeof status === "number" && status >= 400 && status < 500 ? status : 500;
}

function toErrorBody(error: unknown): { status: number; body: ErrorBody } {
  const status = errorStatus(error);
  if (error instanceof HttpError) {
    const inner: ErrorBody["error"] = { code: error.code, message: error.message };
    if (error.details) inner.details = error.details;
    return { status, body: { error: inner } };
  }
  // Errors raised by koa and its body parsers carry an `expose`d 4xx status.
  if (status < 500) {
    const message = (error as { expose?: boolean }).expose ? String((error as Error).message) : "Bad request";
    return { status, body: { error: { code: "bad_request", message } } };
  }
  return { status, body: { error: { code: "internal_error", message: "Internal server error" } } };
}
