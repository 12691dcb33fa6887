import { GatewayError } from "@keen/gateway-kit";

/** Codes the server's domain code throws; only the HTTP edge (`statusOf`) knows their statuses. */
export type ServerErrorCode =
  | "not_found"
  | "invalid_request"
  | "forbidden"
  | "run_not_cancellable"
  | "run_not_finished"
  | "run_not_resumable"
  | "repository_unavailable"
  | "insufficient_credits"
  | "unavailable"
  | "already_member"
  | "invite_unusable"
  | "billing_unavailable"
  | "payment_provider_error"
  | "webhook_url_refused"
  | "webhook_limit"
  | "uploads_busy"
  | "quota_exceeded"
  | "account_verified"
  | "email_unverified"
  | "too_many_streams"
  | "too_many_downloads"
  | "account_erased";

/**
 * A coded domain error. Routes and services throw it; the error edge answers with the status
 * `statusOf(code)` gives and the one error body.
 *
 * @example
 * throw new ServerError("run_not_cancellable", "Run run_1 already finished");
 */
export class ServerError extends GatewayError {
  declare readonly code: ServerErrorCode;
  constructor(code: ServerErrorCode, message: string, details?: Record<string, unknown>) {
    super(code, message, { details });
    this.name = "ServerError";
  }
}

const STATUS: Record<ServerErrorCode, number> = {
  not_found: 404,
  invalid_request: 400,
  forbidden: 403,
  run_not_cancellable: 409,
  run_not_finished: 409,
  run_not_resumable: 409,
  repository_unavailable: 422,
  insufficient_credits: 402,
  unavailable: 503,
  already_member: 409,
  invite_unusable: 410,
  billing_unavailable: 503,
  payment_provider_error: 502,
  webhook_url_refused: 422,
  webhook_limit: 409,
  uploads_busy: 429,
  quota_exceeded: 422,
  account_verified: 409,
  email_unverified: 403,
  too_many_streams: 429,
  too_many_downloads: 429,
  account_erased: 410,
};

/**
 * The server's codes as a gateway-kit status table, for gateway-kit middleware that maps errors
 * itself (`auditRequests` records the status the edge will answer with).
 */
export const SERVER_ERROR_STATUSES: Readonly<Record<ServerErrorCode, number>> = Object.freeze({ ...STATUS });

/** The HTTP status of a domain error code. */
export function statusOf(code: ServerErrorCode): number {
  return STATUS[code];
}
