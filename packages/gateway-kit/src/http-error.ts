import type { Middleware } from "koa";
import { GatewayError } from "./errors.js";

export { AUTH_ERROR_CODES, AuthError, ConfigError, GatewayError, type AuthErrorCode } from "./errors.js";

/**
 * An error raised at the HTTP edge itself (a router, a middleware): it carries its status and
 * response headers. Services throw `GatewayError`s instead, and the edge maps their codes.
 *
 * @example
 * throw new HttpError(403, "forbidden", "Missing permission sessions:write", { missing: "sessions:write" });
 */
export class HttpError extends GatewayError {
  readonly status: number;
  /** Extra response headers, e.g. `Retry-After` or `WWW-Authenticate`. */
  readonly headers: Record<string, string>;
  constructor(
    status: number,
    code: string,
    message: string,
    details?: Record<string, unknown>,
    headers: Record<string, string> = {},
  ) {
    super(code, message, { details });
    this.name = "HttpError";
    this.status = status;
    this.headers = headers;
  }
}

/** How the edge answers one error code: a status, and headers where the protocol asks for them. */
export interface ErrorMapping {
  status: number;
  headers?: Readonly<Record<string, string>> | ((error: GatewayError) => Record<string, string>);
}

/** Codes to statuses: the one table every gateway-kit edge reads. A number is shorthand for `{ status }`. */
export type ErrorStatuses = Readonly<Record<string, number | ErrorMapping>>;

const bearer = { "WWW-Authenticate": 'Bearer realm="keen"' } as const;
const invalidToken = (error: GatewayError) => ({
  "WWW-Authenticate": `Bearer error="invalid_token", error_description="${String(error.details?.reason ?? "invalid")}"`,
});

const stepUp = (error: GatewayError) => ({
  "WWW-Authenticate":
    error.details?.reason === "recent_sign_in_required" && typeof error.details.maxAgeSeconds === "number"
      ? `Bearer error="insufficient_user_authentication", max_age=${error.details.maxAgeSeconds}`
      : 'Bearer error="insufficient_user_authentication"',
});

/**
 * The status of every code a gateway-kit service throws (`GatewayError` and its subclasses).
 * `errorHandler({ statuses })`, `auditRequests(sink, { statuses })` and `errorStatus(error, statuses)`
 * take a host's additions, laid over this table. A `GatewayError` whose code is in no table is a
 * 500 (and reported through `onUnexpected`).
 *
 * @example
 * app.use(errorHandler({ statuses: { ...errorStatuses, run_not_found: 404 } }));
 */
export const errorStatuses = {
  // Configuration and deployment mistakes: the host's fault, never the client's.
  invalid_config: 500,
  missing_dependency: 500,
  invalid_mail_message: 500,
  // Shared.
  invalid_request: 400,
  not_found: 404,
  forbidden: 403,
  unauthenticated: { status: 401, headers: bearer },
  // Auth.
  invalid_password: 403,
  // A valid token whose sign-in is not proof enough for this operation: the step-up challenge of
  // RFC 9470 (401, `insufficient_user_authentication`, `max_age` when a recent sign-in would do).
  reauthentication_required: { status: 401, headers: stepUp },
  invalid_credentials: 401,
  email_taken: 409,
  not_a_member: 403,
  invalid_challenge: 401,
  invalid_registration_challenge: 400,
  invalid_mfa_code: 401,
  invalid_enrolment_code: 400,
  no_webauthn_factor: 400,
  webauthn_failed: 400,
  credential_exists: 409,
  mfa_not_enrolled: 400,
  sms_limit: 429,
  too_many_attempts: 429,
  invalid_refresh_token: 401,
  session_expired: 401,
  session_revoked: { status: 401, headers: { "WWW-Authenticate": 'Bearer error="invalid_token"' } },
  invalid_api_key: { status: 401, headers: { "WWW-Authenticate": 'Bearer realm="keen", error="invalid_token"' } },
  invalid_token: { status: 401, headers: invalidToken },
  token_expired: { status: 401, headers: invalidToken },
  last_owner: 409,
  invalid_state: 400,
  email_not_verified: 403,
  account_email_unverified: 409,
  oauth_provider_error: 502,
  // Email verification: an unknown token (or another account's) is bad input; a real one that
  // expired, was used or names an address the account no longer has is gone for good.
  invalid_verification_token: 400,
  verification_token_expired: 410,
  verification_token_used: 410,
  verification_email_limit: 429,
  email_delivery_failed: 502,
  // Credits and budgets.
  insufficient_credits: 402,
  wallet_in_debt: 402,
  reservation_not_found: 404,
  reservation_closed: 409,
  idempotency_conflict: 409,
  account_not_found: 404,
  unknown_model: 422,
  budget_exceeded: 402,
  budget_reservation_not_found: 404,
  budget_webhook_failed: 502,
  spend_not_found: 404,
  spend_closed: 409,
  // Cost routing.
  context_too_large: 413,
  budget_insufficient: 402,
  invalid_route_request: 400,
  // Limits.
  too_many_concurrent_runs: 429,
  run_slot_lost: 409,
  usage_anomaly: 429,
  quota_exceeded: 422,
  // The client is still sending a body too large to read: end the connection after answering.
  upload_too_large: { status: 413, headers: { Connection: "close" } },
  // Screening: archive uploads.
  archive_too_large: 413,
  archive_uncompressed_too_large: 413,
  archive_entry_too_large: 413,
  archive_too_many_entries: 422,
  archive_bomb: 422,
  archive_unsafe_path: 422,
  archive_unsafe_link: 422,
  archive_special_file: 422,
  archive_unsupported: 422,
  archive_corrupt: 422,
  // Store and audit invariants a caller hit.
  duplicate: 409,
  invalid_audit_event: 500,
  // Billing.
  invalid_meter_report: 400,
  unknown_pack: 400,
} satisfies ErrorStatuses;

function mappingOf(error: GatewayError, statuses: ErrorStatuses): ErrorMapping | undefined {
  if (error instanceof HttpError) return { status: error.status, headers: error.headers };
  const entry = Object.hasOwn(statuses, error.code) ? statuses[error.code] : undefined;
  if (entry === undefined) return undefined;
  return typeof entry === "number" ? { status: entry } : entry;
}

/**
 * The status the edge answers a thrown error with: an `HttpError`'s own, a `GatewayError`'s from
 * the table (`errorStatuses` with the host's `statuses` laid over it), the 4xx that koa and its
 * body parsers attach to theirs, and 500 for everything else.
 *
 * @example
 * errorStatus(new AuthError("invalid_credentials", "…")); // 401
 */
export function errorStatus(error: unknown, statuses: ErrorStatuses = errorStatuses): number {
  if (error instanceof GatewayError) return mappingOf(error, withDefaults(statuses))?.status ?? 500;
  const status = (error as { status?: unknown } | null)?.status;
  return typeof status === "number" && status >= 400 && status < 500 ? status : 500;
}

/** The response headers the edge sends with a thrown error. */
export function errorHeaders(error: unknown, statuses: ErrorStatuses = errorStatuses): Record<string, string> {
  if (!(error instanceof GatewayError)) return {};
  const mapping = mappingOf(error, withDefaults(statuses));
  if (!mapping) return {};
  const headers = typeof mapping.headers === "function" ? mapping.headers(error) : { ...mapping.headers };
  if (error.retryAfterSeconds !== undefined && mapping.status >= 400 && !("Retry-After" in headers)) {
    headers["Retry-After"] = String(error.retryAfterSeconds);
  }
  return headers;
}

function withDefaults(statuses: ErrorStatuses): ErrorStatuses {
  return statuses === errorStatuses ? statuses : { ...errorStatuses, ...statuses };
}

export interface ErrorBody {
  error: { code: string; message: string; details?: Record<string, unknown> };
}

export interface ErrorHandlerOptions {
  /** Called for unexpected (500) errors, e.g. to log them. */
  onUnexpected?: (error: unknown) => void;
  /** The host's own codes (or changed statuses), laid over `errorStatuses`. */
  statuses?: ErrorStatuses;
}

/**
 * Renders every error below it as one JSON shape with the right status.
 * Mount it first.
 *
 * @example
 * app.use(errorHandler({ onUnexpected: (e) => logger.error(e), statuses: { run_not_found: 404 } }));
 */
export function errorHandler(options: ErrorHandlerOptions = {}): Middleware {
  const statuses = withDefaults(options.statuses ?? errorStatuses);
  return async (ctx, next) => {
    try {
      await next();
    } catch (error) {
      const body = toErrorBody(error, statuses);
      ctx.status = body.status;
      if (body.body.error.code === "internal_error") options.onUnexpected?.(error);
      for (const [name, value] of Object.entries(errorHeaders(error, statuses))) ctx.set(name, value);
      ctx.body = body.body;
    }
  };
}

function toErrorBody(error: unknown, statuses: ErrorStatuses): { status: number; body: ErrorBody } {
  const status = errorStatus(error, statuses);
  // A coded error renders its code and message, except a plain 500: that one is a fault of
  // ours (or the host's configuration) and says nothing about it to the client.
  if (error instanceof GatewayError && (status !== 500 || error instanceof HttpError)) {
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
