import * as z from "zod";
import type { AuditSink } from "../audit/index.js";
import { ConfigError } from "../errors.js";
import type { Principal } from "../principal.js";
import type { AccessTokens } from "./jwt.js";
import { JwtKeySet } from "./jwt.js";
import type { LoginLimiter, LoginLimiterOptions } from "./login-limiter.js";
import type { Mailer } from "../mailer.js";
import { OAuthProviderName, type OAuthProviderOptions } from "./oauth.js";
import { PasswordHashingOptions } from "./password.js";
import type { SmsSender } from "./sms.js";
import type { AuthStores } from "./stores.js";
import type { TotpEncryptionOptions } from "./totp-secrets.js";
import * as webauthn from "./webauthn.js";
import { createApiKeyService, type ApiKeyService } from "./service/api-key-service.js";
import { createAuthContext } from "./service/context.js";
import { createMfaService, type MfaService } from "./service/mfa.js";
import { createOAuthService, type OAuthService } from "./service/oauth-service.js";
import { createRecoveryService, type RecoveryService } from "./service/recovery.js";
import {
  createEmailVerificationService,
  type EmailVerificationRequest,
  type EmailVerificationResult,
  type EmailVerificationService,
} from "./service/email-verification.js";
import type { Reauthentication, RequestMeta } from "./service/types.js";
import { createPasswordSessionService, type PasswordSessionService } from "./service/sessions.js";
import { createTeamService, type TeamService } from "./service/teams.js";

export { MfaProof } from "./service/types.js";
export type { ApiKeyView, FactorList, LoginResult, MembershipView, Reauthentication, RequestMeta, SessionView, TokenPair } from "./service/types.js";
export type { EmailVerificationRequest, EmailVerificationResult };
export type { ApiKeyService, EmailVerificationService, MfaService, OAuthService, PasswordSessionService, RecoveryService, TeamService };

const Seconds = z.number().int().positive();

const SendWindow = z.object({ limit: z.number().int().min(1).max(1_000_000), windowSeconds: Seconds.max(31 * 86_400) }).strict();

/** Caps on text messages, against SMS pumping (toll fraud through your sender). */
export const SmsLimitsOptions = z
  .object({
    /** Texts one account may trigger (enrolment and login codes). Default 5 per hour. */
    perAccount: SendWindow.default({ limit: 5, windowSeconds: 3600 }),
    /** Texts one phone number may receive, whoever asks. Default 5 per hour. */
    perNumber: SendWindow.default({ limit: 5, windowSeconds: 3600 }),
    /** Texts in all, across every account: the host's ceiling on spend. Default 1000 per hour. */
    global: SendWindow.default({ limit: 1000, windowSeconds: 3600 }),
    /** Login codes one MFA challenge may send. Default 3. */
    perChallenge: z.number().int().min(1).max(100).default(3),
  })
  .strict();
export type SmsLimitsOptions = z.input<typeof SmsLimitsOptions>;

/**
 * Email verification: who sends the messages, how long a token lives, what the message says and
 * how many may be sent. Without it the verification routes answer 404 `not_found`.
 */
export const EmailVerificationOptions = z
  .object({
    mailer: z.custom<Mailer>((v) => typeof (v as Mailer)?.send === "function", "mailer must be a Mailer"),
    /** How long a verification token can be used. Default 86400 (24 h). */
    ttlSeconds: Seconds.max(30 * 86_400).default(86_400),
    /** Subject of the message. Default `Confirm your email address`. */
    subject: z.string().min(1).max(200).regex(/^[^\r\n]*$/, "subject must be one line").default("Confirm your email address"),
    /** Builds the link the message offers for a token, e.g. to your web app's confirm page. Without it the message gives the token alone. */
    link: z.custom<(token: string) => string>((v) => typeof v === "function", "link must be a function").optional(),
    limits: z
      .object({
        /** Messages one account may ask for. Default 5 per hour. */
        perAccount: SendWindow.default({ limit: 5, windowSeconds: 3600 }),
        /** Messages one address may receive, whichever account asks. Default 5 per hour. */
        perAddress: SendWindow.default({ limit: 5, windowSeconds: 3600 }),
        /** Messages in all: the host's ceiling on what it sends. Default 1000 per hour. */
        global: SendWindow.default({ limit: 1000, windowSeconds: 3600 }),
      })
      .strict()
      .default({ perAccount: { limit: 5, windowSeconds: 3600 }, perAddress: { limit: 5, windowSeconds: 3600 }, global: { limit: 1000, windowSeconds: 3600 } }),
  })
  .strict();
export type EmailVerificationOptions = z.input<typeof EmailVerificationOptions>;

/** Options of `createAuthService`, checked when it is created. */
export const AuthServiceOptions = z.object({
  stores: z.custom<AuthStores>((v) => typeof v === "object" && v !== null && "users" in v && "transaction" in v, "stores must be an AuthStores"),
  keys: z.custom<JwtKeySet>((v) => v instanceof JwtKeySet, "keys must be a JwtKeySet"),
  /** `iss` of access tokens, e.g. your public URL. */
  issuer: z.string().min(1),
  /** `aud` of access tokens, e.g. `keen-api`. */
  audience: z.string().min(1),
  /** Access-token lifetime. Default 900 (15 min). */
  accessTokenTtlSeconds: Seconds.max(86_400).default(900),
  /** A session unused for this long ends. Default 7 days. */
  sessionIdleTimeoutSeconds: Seconds.default(7 * 86_400),
  /** A session ends this long after login whatever happens. Default 30 days. */
  sessionMaxAgeSeconds: Seconds.default(30 * 86_400),
  passwordHashing: PasswordHashingOptions.optional(),
  /** Brute-force limiter settings (checked by `createLoginLimiter`). */
  loginLimiter: z.custom<LoginLimiterOptions>((v) => typeof v === "object" && v !== null).optional(),
  /** How long a verified API key is served from memory. Default 5000 ms; 0 disables the cache. */
  apiKeyCacheTtlMs: z.number().int().min(0).max(60_000).default(5000),
  /** `last_used_at` is written at most this often per key. Default 60 s. */
  apiKeyTouchIntervalMs: z.number().int().min(0).default(60_000),
  /** Issuer shown in authenticator apps. Default `keen`. */
  totpIssuer: z.string().min(1).default("keen"),
  /** Lifetime of the token between password and second factor. Default 300 s. */
  mfaChallengeTtlSeconds: Seconds.max(3600).default(300),
  /**
   * An account without a password (signed up through an OAuth provider) proves itself before a
   * sensitive change (adding or removing a factor, new recovery codes) by a sign-in at most this
   * old. Accounts with a password always give the password. Default 300 s.
   */
  reauthMaxAgeSeconds: Seconds.max(86_400).default(300),
  /** Wrong second factors allowed per challenge. Default 5. */
  mfaMaxAttempts: z.number().int().min(1).max(100).default(5),
  audit: z.custom<AuditSink>((v) => typeof (v as AuditSink)?.record === "function", "audit must be an AuditSink").optional(),
  webauthn: webauthn.WebAuthnOptions.optional(),
  oauth: z.partialRecord(OAuthProviderName, z.custom<OAuthProviderOptions>((v) => typeof v === "object" && v !== null)).optional(),
  sms: z.custom<SmsSender>((v) => typeof (v as SmsSender)?.send === "function", "sms must be an SmsSender").optional(),
  /** Verification emails; see `EmailVerificationOptions`. */
  emailVerification: EmailVerificationOptions.optional(),
  /** Caps on SMS sends; see `SmsLimitsOptions`. */
  smsLimits: SmsLimitsOptions.default(SmsLimitsOptions.parse({})),
  /** A password change also revokes the user's API keys. Default true. */
  revokeApiKeysOnPasswordChange: z.boolean().default(true),
  /** Lifetime of an OAuth sign-in's state (and its browser cookie). Default 600 s. */
  oauthStateTtlSeconds: Seconds.max(3600).default(600),
  /** Keys that encrypt TOTP secrets at rest (AES-256-GCM); see `TotpEncryptionOptions`. Without them secrets are stored in plain text. */
  totpEncryption: z.custom<TotpEncryptionOptions>((v) => typeof v === "object" && v !== null, "totpEncryption must be an object").optional(),
  fetch: z.custom<typeof fetch>((v) => typeof v === "function").optional(),
  now: z.custom<() => Date>((v) => typeof v === "function").optional(),
  /** Called when the audit sink fails; the auth operation itself still completes. */
  onAuditError: z.custom<(error: unknown) => void>((v) => typeof v === "function").optional(),
});
export type AuthServiceOptions = z.input<typeof AuthServiceOptions>;


/**
 * The auth service: every operation behind the auth routes and `authenticate()`, one object made
 * of one part per concern. A host that needs only part of it can depend on that part's interface.
 */
export interface AuthService extends PasswordSessionService, MfaService, RecoveryService, ApiKeyService, OAuthService, TeamService, EmailVerificationService {
  /** The access-token issuer, e.g. to publish `keys.jwks()` next to it. */
  readonly accessTokens: AccessTokens;
  readonly keys: JwtKeySet;
  readonly stores: AuthStores;
  readonly limiter: LoginLimiter;
  /**
   * The check every operation that changes how an account signs in runs first (factors, recovery
   * codes), for a host's own sensitive routes too: a user's session (never an API key) and the
   * password, or for an account without one a sign-in at most `reauthMaxAgeSeconds` old.
   * Throws `reauthentication_required` (401), `invalid_password` (403, counted by the login
   * limiter), `too_many_attempts` or `forbidden`.
   *
   * @example
   * await auth.reauthenticate(ctx.state.principal!, { password: body.password }, { ip: requestIp(ctx) });
   */
  reauthenticate(principal: Principal, proof: Reauthentication, meta?: RequestMeta): Promise<void>;
  /**
   * Forgets what this process caches about a user's credentials, so an API key of a user just
   * erased (`eraseUserData`) or changed outside this service stops working now rather than
   * after `apiKeyCacheTtlMs`. Other processes drop it within that TTL.
   *
   * @example
   * await eraseUserData(db, userId, [authDataRights(), auditDataRights()]);
   * auth.evictUser(userId);
   */
  evictUser(userId: string): void;
}

/**
 * Creates the auth service over your stores and keys. Options are validated here; a bad option
 * throws a `ConfigError`.
 *
 * @example
 * const auth = createAuthService({
 *   stores: createKyselyAuthStores(db),
 *   keys: await JwtKeySet.generate(),
 *   issuer: "https://keen.example",
 *   audience: "keen-api",
 *   totpEncryption: { currentKeyId: "2026-12", keys: { "2026-12": process.env.TOTP_KEY! } },
 * });
 */
export function createAuthService(options: AuthServiceOptions): AuthService {
  const parsed = AuthServiceOptions.safeParse(options);
  if (!parsed.success) throw new ConfigError(`Invalid auth service options: ${z.prettifyError(parsed.error)}`);
  if (parsed.data.sessionIdleTimeoutSeconds > parsed.data.sessionMaxAgeSeconds) {
    throw new ConfigError("sessionIdleTimeoutSeconds cannot exceed sessionMaxAgeSeconds");
  }
  const context = createAuthContext(parsed.data);
  return {
    accessTokens: context.accessTokens,
    keys: parsed.data.keys,
    stores: context.stores,
    limiter: context.limiter,
    evictUser: context.evictUser,
    reauthenticate: async (principal, proof, meta = {}) => void (await context.reauthenticate(principal, proof, meta)),
    ...createPasswordSessionService(context),
    ...createMfaService(context),
    ...createRecoveryService(context),
    ...createApiKeyService(context),
    ...createOAuthService(context),
    ...createTeamService(context),
    ...createEmailVerificationService(context),
  };
}
