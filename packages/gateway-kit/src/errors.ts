/**
 * The base of every error gateway-kit's services throw on purpose. Its `code` is stable and
 * machine-readable; the HTTP edge (`errorHandler`, `auditRequests`, `errorStatus`) turns the code
 * into a status through `errorStatuses`, so a job worker calling a service outside any request
 * gets the same coded error a route would.
 *
 * @example
 * try {
 *   await auth.login({ email, password });
 * } catch (error) {
 *   if (error instanceof GatewayError && error.code === "invalid_credentials") showLoginForm();
 *   else throw error;
 * }
 */
export class GatewayError extends Error {
  readonly code: string;
  readonly details: Record<string, unknown> | undefined;
  /** How long a caller should wait before trying again, when that is known (the edge sends it as `Retry-After`). */
  readonly retryAfterSeconds: number | undefined;
  constructor(
    code: string,
    message: string,
    options: { details?: Record<string, unknown> | undefined; retryAfterSeconds?: number | undefined; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "GatewayError";
    this.code = code;
    this.details = options.details;
    this.retryAfterSeconds = options.retryAfterSeconds;
  }
}

/**
 * Options a constructor or factory was given do not hold together (a programming or deployment
 * mistake, not bad client input). `code` is `invalid_config`; at HTTP it is a 500.
 *
 * @example
 * createAuthService({ ...options, sessionIdleTimeoutSeconds: 10, sessionMaxAgeSeconds: 5 });
 * // throws ConfigError: sessionIdleTimeoutSeconds cannot exceed sessionMaxAgeSeconds
 */
export class ConfigError extends GatewayError {
  declare readonly code: "invalid_config";
  constructor(message: string, options: { details?: Record<string, unknown>; cause?: unknown } = {}) {
    super("invalid_config", message, options);
    this.name = "ConfigError";
  }
}

/** Every code the auth module's services throw (`AuthError`). */
export const AUTH_ERROR_CODES = [
  "unauthenticated",
  "not_found",
  "forbidden",
  "invalid_request",
  "invalid_password",
  "reauthentication_required",
  "invalid_credentials",
  "email_taken",
  "not_a_member",
  "invalid_challenge",
  "invalid_registration_challenge",
  "invalid_mfa_code",
  "invalid_enrolment_code",
  "no_webauthn_factor",
  "webauthn_failed",
  "credential_exists",
  "mfa_not_enrolled",
  "sms_limit",
  "too_many_attempts",
  "invalid_refresh_token",
  "session_expired",
  "session_revoked",
  "invalid_api_key",
  "invalid_token",
  "token_expired",
  "last_owner",
  "invalid_state",
  "email_not_verified",
  "account_email_unverified",
  "oauth_provider_error",
  "invalid_verification_token",
  "verification_token_expired",
  "verification_token_used",
  "verification_email_limit",
  "email_delivery_failed",
] as const;
export type AuthErrorCode = (typeof AUTH_ERROR_CODES)[number];

/**
 * An auth operation was refused: wrong credentials, an expired session, a missing permission, a
 * lockout. `code` is one of `AUTH_ERROR_CODES`.
 *
 * @example
 * throw new AuthError("invalid_credentials", "Email or password is incorrect");
 */
export class AuthError extends GatewayError {
  declare readonly code: AuthErrorCode;
  constructor(
    code: AuthErrorCode,
    message: string,
    options: { details?: Record<string, unknown> | undefined; retryAfterSeconds?: number | undefined; cause?: unknown } = {},
  ) {
    super(code, message, options);
    this.name = "AuthError";
  }
}
