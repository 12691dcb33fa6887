import { randomUUID } from "node:crypto";
import { z } from "zod";
import { noAudit, type AuditEventInput, type AuditSink } from "../audit/audit-sink.js";
import { normaliseIp } from "../http/client-ip.js";
import { AuthError, ConfigError } from "../errors.js";
import type { Principal } from "../principal.js";
import { ApiKeyCache, mintApiKey, parseApiKey, secretMatches } from "./api-keys.js";
import { createAccessTokens, JwtKeySet, type AccessTokens } from "./jwt.js";
import { createLoginLimiter, type LoginLimiterOptions, type LoginLimiter, type LoginSubject } from "./login-limiter.js";
import { authorizeUrl, fetchProfile, OAuthProviderName, resolveProvider, type OAuthProvider, type OAuthProviderOptions } from "./oauth.js";
import { createPasswordHasher, PasswordHashingOptions, type PasswordHasher } from "./password.js";
import { effectiveScopes, permissionsForRole, Role } from "./permissions.js";
import { digestsEqual, randomBase32, randomToken, sha256Hex } from "./secrets.js";
import { newSmsCode, PHONE_NUMBER, type SmsSender } from "./sms.js";
import { DuplicateError, LastOwnerError, type ApiKeyRecord, type AuthStores, type MfaFactorRecord, type SessionRecord, type UserRecord } from "./stores.js";
import { matchTotpStep, newTotpSecret } from "./totp.js";
import * as webauthn from "./webauthn.js";

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
  /** Wrong second factors allowed per challenge. Default 5. */
  mfaMaxAttempts: z.number().int().min(1).max(100).default(5),
  audit: z.custom<AuditSink>((v) => typeof (v as AuditSink)?.record === "function", "audit must be an AuditSink").optional(),
  webauthn: webauthn.WebAuthnOptions.optional(),
  oauth: z.partialRecord(OAuthProviderName, z.custom<OAuthProviderOptions>((v) => typeof v === "object" && v !== null)).optional(),
  sms: z.custom<SmsSender>((v) => typeof (v as SmsSender)?.send === "function", "sms must be an SmsSender").optional(),
  /** Caps on SMS sends; see `SmsLimitsOptions`. */
  smsLimits: SmsLimitsOptions.default(SmsLimitsOptions.parse({})),
  /** A password change also revokes the user's API keys. Default true. */
  revokeApiKeysOnPasswordChange: z.boolean().default(true),
  /** Lifetime of an OAuth sign-in's state (and its browser cookie). Default 600 s. */
  oauthStateTtlSeconds: Seconds.max(3600).default(600),
  fetch: z.custom<typeof fetch>((v) => typeof v === "function").optional(),
  now: z.custom<() => Date>((v) => typeof v === "function").optional(),
  /** Called when the audit sink fails; the auth operation itself still completes. */
  onAuditError: z.custom<(error: unknown) => void>((v) => typeof v === "function").optional(),
});
export type AuthServiceOptions = z.input<typeof AuthServiceOptions>;

/** Where a request came from, for sessions, limits and the audit log. */
export interface RequestMeta {
  ip?: string | undefined;
  userAgent?: string | undefined;
  requestId?: string | undefined;
}

/** Tokens returned by a completed login or refresh. */
export interface TokenPair {
  tokenType: "Bearer";
  accessToken: string;
  /** Seconds until the access token expires. */
  expiresIn: number;
  refreshToken: string;
  sessionId: string;
  teamId: string | null;
}

/** A login either completes or asks for a second factor. */
export type LoginResult =
  | ({ status: "authenticated" } & TokenPair)
  | { status: "mfa_required"; challengeToken: string; factors: Array<{ id: string; kind: string; label: string | null }> };

/** A factor a second login step may use. */
export const MfaProof = z.discriminatedUnion("method", [
  z.object({ method: z.literal("totp"), code: z.string().max(16) }),
  z.object({ method: z.literal("recovery_code"), code: z.string().max(64) }),
  z.object({ method: z.literal("sms"), code: z.string().max(16) }),
  z.object({ method: z.literal("webauthn"), response: webauthn.WebAuthnResponse }),
]);
export type MfaProof = z.infer<typeof MfaProof>;

/** A public view of an API key (never the secret). */
export interface ApiKeyView {
  id: string;
  name: string;
  prefix: string;
  scopes: string[];
  userId: string;
  teamId: string;
  createdAt: string;
  expiresAt: string | null;
  lastUsedAt: string | null;
}

interface CachedKey {
  key: ApiKeyRecord;
  ownerRole: Role | undefined;
}

const RECOVERY_CODE_COUNT = 10;

/** Internal: one SMS cap is full (rolls the send's other counts back). */
class SmsCapReached extends Error {
  constructor(readonly key: string) {
    super(key);
  }
}

/** The auth service: every operation behind the auth routes and `authenticate()`. */
export type AuthService = ReturnType<typeof buildAuthService>;

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
 * });
 */
export function createAuthService(options: AuthServiceOptions) {
  const parsed = AuthServiceOptions.safeParse(options);
  if (!parsed.success) throw new ConfigError(`Invalid auth service options: ${z.prettifyError(parsed.error)}`);
  if (parsed.data.sessionIdleTimeoutSeconds > parsed.data.sessionMaxAgeSeconds) {
    throw new ConfigError("sessionIdleTimeoutSeconds cannot exceed sessionMaxAgeSeconds");
  }
  return buildAuthService(parsed.data);
}

function buildAuthService(config: z.output<typeof AuthServiceOptions>) {
  const { stores } = config;
  const now = config.now ?? (() => new Date());
  const auditSink = config.audit ?? noAudit;
  const fetchImpl = config.fetch ?? fetch;
  const hasher: PasswordHasher = createPasswordHasher(config.passwordHashing ?? {});
  const limiter: LoginLimiter = createLoginLimiter(stores.loginAttempts, config.loginLimiter ?? {}, now);
  const accessTokens: AccessTokens = createAccessTokens({
    keys: config.keys,
    issuer: config.issuer,
    audience: config.audience,
    ttlSeconds: config.accessTokenTtlSeconds,
    now,
  });
  const keyCache = new ApiKeyCache<CachedKey>(config.apiKeyCacheTtlMs, 10_000, () => now().getTime());
  const lastTouched = new Map<string, number>();
  const providers = new Map<OAuthProviderName, OAuthProvider>();
  for (const [name, providerOptions] of Object.entries(config.oauth ?? {})) {
    if (providerOptions) providers.set(name as OAuthProviderName, resolveProvider(name as OAuthProviderName, providerOptions));
  }

  async function audit(event: AuditEventInput): Promise<void> {
    try {
      await auditSink.record(event);
    } catch (error) {
      config.onAuditError?.(error);
    }
  }

  const unauthenticated = (message = "Authentication required") =>
    new AuthError("unauthenticated", message);
  const notFound = (what: string) => new AuthError("not_found", `${what} not found`);

  async function requireUser(principal: Principal): Promise<UserRecord> {
    const user = await stores.users.findById(principal.userId);
    if (!user) throw unauthenticated();
    return user;
  }

  /**
   * Every re-authentication with the password goes through the brute-force limiter: counted
   * before the check, taken back when right, so a session holder cannot guess at full speed.
   */
  async function checkPassword(user: UserRecord, password: string, meta: RequestMeta): Promise<void> {
    const subject: LoginSubject = { account: user.email, ip: meta.ip };
    await limiter.begin(subject);
    if (!user.passwordHash || !(await hasher.verify(user.passwordHash, password))) {
      await audit({ tenantId: null, actorId: user.id, action: "auth.password_check", target: `user:${user.id}`, result: "failure", ip: meta.ip ?? null, requestId: meta.requestId ?? null });
      throw new AuthError("invalid_password", "Current password is incorrect");
    }
    await limiter.release(subject);
  }

  /** Counts one SMS send against each cap at once; refuses with 429 `sms_limit` if any is full. */
  async function claimSmsSend(userId: string, phone: string, challengeId?: string): Promise<void> {
    const limits = config.smsLimits;
    const atMs = now().getTime();
    const windowOf = (w: { windowSeconds: number }) => new Date(Math.floor(atMs / (w.windowSeconds * 1000)) * w.windowSeconds * 1000);
    const rules: Array<{ key: string; limit: number; windowStart: Date }> = [
      { key: "sms:all", limit: limits.global.limit, windowStart: windowOf(limits.global) },
      // Hashed: the counter table need not hold phone numbers.
      { key: `sms:phone:${sha256Hex(phone)}`, limit: limits.perNumber.limit, windowStart: windowOf(limits.perNumber) },
      { key: `sms:user:${userId}`, limit: limits.perAccount.limit, windowStart: windowOf(limits.perAccount) },
      ...(challengeId ? [{ key: `sms:challenge:${challengeId}`, limit: limits.perChallenge, windowStart: new Date(0) }] : []),
    ];
    const refusedBy = await stores
      .transaction(async (tx) => {
        for (const rule of rules) {
          // Throwing rolls the other counts of this send back.
          if (!(await tx.counters.hit(rule.key, rule.windowStart, rule.limit))) throw new SmsCapReached(rule.key);
        }
        return undefined;
      })
      .catch((error: unknown) => {
        if (error instanceof SmsCapReached) return error.key;
        throw error;
      });
    if (refusedBy) {
      const scope = refusedBy.split(":")[1];
      throw new AuthError("sms_limit", "Too many text messages; try again later or use another factor", { details: { scope } });
    }
  }

  /** Drops a user's API keys from this process's cache (after erasure, sign-out everywhere, a password change). */
  function evictUser(userId: string): void {
    keyCache.evict((cached) => cached.key.userId === userId);
  }

  /** Starts a session (a refresh-token family) and issues the first token pair. */
  async function startSession(userId: string, teamId: string | null, meta: RequestMeta): Promise<TokenPair> {
    const at = now();
    const sessionId = randomUUID();
    const refreshToken = `rt_${randomToken(32)}`;
    await stores.transaction(async (tx) => {
      await tx.refreshTokens.createSession({
        id: sessionId,
        userId,
        teamId,
        createdAt: at,
        lastSeenAt: at,
        expiresAt: new Date(at.getTime() + config.sessionMaxAgeSeconds * 1000),
        userAgent: meta.userAgent?.slice(0, 512) ?? null,
        ip: normaliseIp(meta.ip) ?? null,
      });
      await tx.refreshTokens.addToken({ id: randomUUID(), sessionId, tokenHash: sha256Hex(refreshToken), createdAt: at });
    });
    const { token } = await accessTokens.sign({ userId, sessionId, ...(teamId ? { teamId } : {}) });
    return { tokenType: "Bearer", accessToken: token, expiresIn: accessTokens.ttlSeconds, refreshToken, sessionId, teamId };
  }

  async function chooseTeam(userId: string, requested: string | undefined): Promise<string | null> {
    const memberships = await stores.teams.memberships(userId);
    if (requested) {
      if (!memberships.some((m) => m.teamId === requested)) throw new AuthError("not_a_member", "You are not a member of that team");
      return requested;
    }
    return memberships[0]?.teamId ?? null;
  }

  async function confirmedFactors(userId: string): Promise<MfaFactorRecord[]> {
    return (await stores.mfa.factors(userId)).filter((f) => f.confirmedAt !== null);
  }

  /** Completes a first factor: either tokens, or a challenge when MFA is enrolled. */
  async function afterFirstFactor(user: UserRecord, teamId: string | null, meta: RequestMeta, via: string, attempt?: LoginSubject): Promise<LoginResult> {
    const factors = await confirmedFactors(user.id);
    // The account's counter is cleared only by a complete login; a right password with a
    // second factor still to come only takes its own count back.
    if (attempt) await (factors.length === 0 ? limiter.reset(attempt) : limiter.release(attempt));
    if (factors.length === 0) {
      const pair = await startSession(user.id, teamId, meta);
      await audit({ tenantId: teamId, actorId: user.id, action: "auth.login", target: `session:${pair.sessionId}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null, details: { via } });
      return { status: "authenticated", ...pair };
    }
    const challengeToken = `mfa_${randomToken(32)}`;
    const at = now();
    await stores.flows.put(
      {
        id: sha256Hex(challengeToken),
        kind: "mfa_login",
        userId: user.id,
        data: { teamId, via },
        attempts: 0,
        expiresAt: new Date(at.getTime() + config.mfaChallengeTtlSeconds * 1000),
      },
      at,
    );
    return {
      status: "mfa_required",
      challengeToken,
      factors: factors.map((f) => ({ id: f.id, kind: f.kind, label: f.label })),
    };
  }

  async function loadChallenge(challengeToken: string) {
    const flow = await stores.flows.peek(sha256Hex(challengeToken), "mfa_login", now());
    if (!flow || !flow.userId) throw new AuthError("invalid_challenge", "MFA challenge is invalid or expired");
    const user = await stores.users.findById(flow.userId);
    if (!user) throw new AuthError("invalid_challenge", "MFA challenge is invalid or expired");
    return { flow, user };
  }

  async function verifyTotp(code: string, factors: MfaFactorRecord[]): Promise<MfaFactorRecord | undefined> {
    const at = now();
    for (const factor of factors) {
      if (factor.kind !== "totp" || !factor.secret) continue;
      const step = matchTotpStep(factor.secret, code.trim(), at);
      // A matching code counts only if its step is newer than the last accepted one: no replays.
      if (step !== undefined && (await stores.mfa.advanceTotpStep(factor.id, step))) return factor;
    }
    return undefined;
  }

  function normaliseRecoveryCode(code: string): string {
    return code.toLowerCase().replace(/[\s-]/g, "");
  }

  async function issueRecoveryCodes(userId: string): Promise<string[]> {
    const codes = Array.from({ length: RECOVERY_CODE_COUNT }, () => randomBase32(16).replace(/(.{4})(?!$)/g, "$1-"));
    await stores.mfa.replaceRecoveryCodes(userId, codes.map((c) => sha256Hex(normaliseRecoveryCode(c))), now());
    return codes;
  }

  function toKeyView(key: ApiKeyRecord): ApiKeyView {
    return {
      id: key.id,
      name: key.name,
      prefix: key.prefix,
      scopes: key.scopes,
      userId: key.userId,
      teamId: key.teamId,
      createdAt: key.createdAt.toISOString(),
      expiresAt: key.expiresAt?.toISOString() ?? null,
      lastUsedAt: key.lastUsedAt?.toISOString() ?? null,
    };
  }

  function sessionView(session: SessionRecord, currentSessionId: string | undefined) {
    return {
      id: session.id,
      teamId: session.teamId,
      createdAt: session.createdAt.toISOString(),
      lastSeenAt: session.lastSeenAt.toISOString(),
      expiresAt: session.expiresAt.toISOString(),
      userAgent: session.userAgent,
      ip: session.ip,
      current: session.id === currentSessionId,
    };
  }

  function sessionIsLive(session: SessionRecord, at: Date): boolean {
    return session.revokedAt === null && session.expiresAt.getTime() > at.getTime();
  }

  function webauthnConfig(): webauthn.WebAuthnOptions {
    if (!config.webauthn) throw new AuthError("not_found", "WebAuthn is not enabled");
    return config.webauthn;
  }

  function smsSender(): SmsSender {
    if (!config.sms) throw new AuthError("not_found", "SMS factor is not enabled");
    return config.sms;
  }

  const service = {
    /** The access-token issuer, e.g. to publish `keys.jwks()` next to it. */
    accessTokens,
    keys: config.keys,
    stores,
    limiter,

    async signup(input: { email: string; password: string; displayName?: string | undefined }, meta: RequestMeta = {}) {
      const passwordHash = await hasher.hash(input.password);
      const at = now();
      const userId = randomUUID();
      const teamId = randomUUID();
      try {
        await stores.transaction(async (tx) => {
          await tx.users.create(
            { id: userId, email: input.email, emailVerified: false, passwordHash, displayName: input.displayName ?? null },
            at,
          );
          // Everyone gets a personal team they own: the individual tier of the role model.
          await tx.teams.create({ id: teamId, name: input.displayName ? `${input.displayName}'s workspace` : "Personal", personal: true }, at);
          await tx.teams.addMember(teamId, userId, "owner", at);
        });
      } catch (error) {
        if (error instanceof DuplicateError) throw new AuthError("email_taken", "An account with that email already exists");
        throw error;
      }
      await audit({ tenantId: teamId, actorId: userId, action: "auth.signup", target: `user:${userId}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null });
      const pair = await startSession(userId, teamId, meta);
      return { user: { id: userId, email: input.email }, ...pair };
    },

    async login(input: { email: string; password: string; teamId?: string | undefined }, meta: RequestMeta = {}): Promise<LoginResult> {
      const subject: LoginSubject = { account: input.email, ip: meta.ip };
      await limiter.begin(subject);
      const user = await stores.users.findByEmail(input.email);
      let ok = false;
      if (user?.passwordHash) ok = await hasher.verify(user.passwordHash, input.password);
      else await hasher.verifyDummy(input.password);
      if (!user || !ok) {
        // Already counted by begin().
        await audit({ tenantId: null, actorId: user?.id ?? null, action: "auth.login", target: user ? `user:${user.id}` : null, result: "failure", ip: meta.ip ?? null, requestId: meta.requestId ?? null });
        throw new AuthError("invalid_credentials", "Email or password is incorrect");
      }
      let teamId: string | null;
      try {
        teamId = await chooseTeam(user.id, input.teamId);
      } catch (error) {
        await limiter.release(subject);
        throw error;
      }
      return afterFirstFactor(user, teamId, meta, "password", subject);
    },

    /**
     * Second login step: a challenge token plus one factor. The attempt is counted first, on the
     * challenge (at most `mfaMaxAttempts` checks, however many arrive at once) and against the
     * account's lockout; the counts are cleared only when the login completes.
     */
    async completeMfaLogin(input: { challengeToken: string } & MfaProof, meta: RequestMeta = {}): Promise<TokenPair> {
      const invalidChallenge = () => new AuthError("invalid_challenge", "MFA challenge is invalid or expired");
      const flow = await stores.flows.claimAttempt(sha256Hex(input.challengeToken), "mfa_login", config.mfaMaxAttempts, now());
      if (!flow?.userId) throw invalidChallenge();
      const user = await stores.users.findById(flow.userId);
      if (!user) throw invalidChallenge();
      const subject: LoginSubject = { account: user.email, ip: meta.ip };
      await limiter.begin(subject);
      const factors = await confirmedFactors(user.id);
      let used: string | undefined;
      if (input.method === "totp") {
        used = (await verifyTotp(input.code, factors))?.id;
      } else if (input.method === "recovery_code") {
        const hash = sha256Hex(normaliseRecoveryCode(input.code));
        if (await stores.mfa.consumeRecoveryCode(user.id, hash, now())) used = "recovery_code";
      } else if (input.method === "sms") {
        const expected = flow.data.smsCodeHash;
        // The code is only as good as the factor it was sent for: deleted or re-numbered, it is void.
        const factor = factors.find((f) => f.kind === "sms" && f.id === flow.data.smsFactorId && f.phone === flow.data.smsPhone);
        if (typeof expected === "string" && factor && digestsEqual(sha256Hex(input.code.trim()), expected)) used = factor.id;
      } else {
        const options = webauthnConfig();
        const expected = flow.data.webauthnChallenge;
        const factor = factors.find((f) => f.kind === "webauthn" && f.credentialId === input.response.id);
        if (typeof expected === "string" && factor) {
          const result = await webauthn.verifyAuthentication(options, input.response, expected, factor).catch(() => undefined);
          if (result && (await stores.mfa.updateCounter(factor.id, result.newCounter))) used = factor.id;
        }
      }
      if (!used) {
        if (flow.attempts >= config.mfaMaxAttempts) await stores.flows.delete(flow.id);
        await audit({ tenantId: null, actorId: user.id, action: "auth.mfa", target: `user:${user.id}`, result: "failure", ip: meta.ip ?? null, requestId: meta.requestId ?? null, details: { method: input.method } });
        throw new AuthError("invalid_mfa_code", "The second factor was not accepted");
      }
      // Consuming the challenge makes it single-use even if two requests raced past the checks.
      if (!(await stores.flows.take(flow.id, "mfa_login", now()))) throw invalidChallenge();
      await limiter.reset(subject);
      const teamId = typeof flow.data.teamId === "string" ? flow.data.teamId : null;
      const pair = await startSession(user.id, teamId, meta);
      await audit({ tenantId: teamId, actorId: user.id, action: "auth.login", target: `session:${pair.sessionId}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null, details: { via: flow.data.via, mfa: input.method } });
      if (input.method === "recovery_code") {
        await audit({ tenantId: teamId, actorId: user.id, action: "mfa.recovery_code_used", target: `user:${user.id}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null });
      }
      return pair;
    },

    /** WebAuthn assertion options for the second login step. */
    async webauthnLoginOptions(challengeToken: string) {
      const options = webauthnConfig();
      const { flow, user } = await loadChallenge(challengeToken);
      const factors = (await confirmedFactors(user.id)).filter((f) => f.kind === "webauthn");
      if (factors.length === 0) throw new AuthError("no_webauthn_factor", "No security key is registered");
      const request = await webauthn.authenticationOptions(options, factors);
      await stores.flows.update(flow.id, { ...flow.data, webauthnChallenge: request.challenge });
      return request;
    },

    /** Sends a login code to an enrolled phone for the second login step. */
    async sendLoginSms(challengeToken: string, factorId: string) {
      const sender = smsSender();
      const { flow, user } = await loadChallenge(challengeToken);
      const factor = (await confirmedFactors(user.id)).find((f) => f.id === factorId && f.kind === "sms");
      if (!factor?.phone) throw notFound("Factor");
      await claimSmsSend(user.id, factor.phone, flow.id);
      const code = newSmsCode();
      await stores.flows.update(flow.id, { ...flow.data, smsCodeHash: sha256Hex(code), smsFactorId: factor.id, smsPhone: factor.phone });
      await sender.send(factor.phone, `Your keen sign-in code is ${code}`);
    },

    async refresh(refreshToken: string, meta: RequestMeta = {}): Promise<TokenPair> {
      const invalid = () => new AuthError("invalid_refresh_token", "Refresh token is invalid or expired");
      if (!refreshToken.startsWith("rt_") || refreshToken.length > 100) throw invalid();
      const found = await stores.refreshTokens.findByHash(sha256Hex(refreshToken));
      if (!found) throw invalid();
      const { token, session } = found;
      const at = now();
      const revokeFamily = async (reason: string) => {
        await stores.refreshTokens.revokeSession(session.id, reason, at);
      };
      if (token.rotatedAt !== null) {
        // A rotated token came back: it leaked, so nobody holding this family can be trusted.
        if (session.revokedAt === null) await revokeFamily("refresh_token_reuse");
        await audit({ tenantId: session.teamId, actorId: session.userId, action: "auth.refresh_reuse", target: `session:${session.id}`, result: "denied", ip: meta.ip ?? null, requestId: meta.requestId ?? null });
        throw invalid();
      }
      if (session.revokedAt !== null) throw invalid();
      if (session.expiresAt.getTime() <= at.getTime()) {
        await revokeFamily("max_age");
        throw new AuthError("session_expired", "Session expired; sign in again");
      }
      if (at.getTime() - session.lastSeenAt.getTime() > config.sessionIdleTimeoutSeconds * 1000) {
        await revokeFamily("idle");
        throw new AuthError("session_expired", "Session expired; sign in again");
      }
      const next = `rt_${randomToken(32)}`;
      const rotated = await stores.transaction(async (tx) => {
        if (!(await tx.refreshTokens.markRotated(token.id, at))) return false;
        await tx.refreshTokens.addToken({ id: randomUUID(), sessionId: session.id, tokenHash: sha256Hex(next), createdAt: at });
        await tx.refreshTokens.touchSession(session.id, at);
        return true;
      });
      if (!rotated) {
        // Lost a race with another use of the same token: that is reuse too.
        await revokeFamily("refresh_token_reuse");
        await audit({ tenantId: session.teamId, actorId: session.userId, action: "auth.refresh_reuse", target: `session:${session.id}`, result: "denied", ip: meta.ip ?? null, requestId: meta.requestId ?? null });
        throw invalid();
      }
      // The role may have been revoked since login; an ex-member's session keeps no team.
      const teamId = session.teamId && (await stores.teams.roleOf(session.userId, session.teamId)) ? session.teamId : null;
      const { token: accessToken } = await accessTokens.sign({ userId: session.userId, sessionId: session.id, ...(teamId ? { teamId } : {}) });
      return { tokenType: "Bearer", accessToken, expiresIn: accessTokens.ttlSeconds, refreshToken: next, sessionId: session.id, teamId };
    },

    /** Ends a session, by the principal's own session or by a refresh token. */
    async logout(input: { principal?: Principal | undefined; refreshToken?: string | undefined }, meta: RequestMeta = {}) {
      let session: SessionRecord | undefined;
      if (input.refreshToken) session = (await stores.refreshTokens.findByHash(sha256Hex(input.refreshToken)))?.session;
      if (!session && input.principal?.sessionId) session = await stores.refreshTokens.findSession(input.principal.sessionId);
      if (!session || (input.principal && input.principal.userId !== session.userId)) {
        throw new AuthError("invalid_refresh_token", "No session to end");
      }
      await stores.refreshTokens.revokeSession(session.id, "logout", now());
      await audit({ tenantId: session.teamId, actorId: session.userId, action: "auth.logout", target: `session:${session.id}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null });
    },

    /**
     * Changes the password, ends every other session of the user and (unless
     * `revokeApiKeysOnPasswordChange` is false) revokes their API keys.
     */
    async changePassword(principal: Principal, input: { currentPassword: string; newPassword: string }, meta: RequestMeta = {}) {
      const user = await requireUser(principal);
      await checkPassword(user, input.currentPassword, meta);
      const passwordHash = await hasher.hash(input.newPassword);
      const at = now();
      const { revokedSessions, revokedApiKeys } = await stores.transaction(async (tx) => {
        await tx.users.setPassword(user.id, passwordHash, at);
        return {
          revokedSessions: await tx.refreshTokens.revokeUserSessions(user.id, "password_change", at, principal.sessionId),
          revokedApiKeys: config.revokeApiKeysOnPasswordChange ? await tx.apiKeys.revokeUserKeys(user.id, at) : 0,
          // A second-factor challenge begun with the old password must not outlive it.
          endedChallenges: await tx.flows.deleteForUser(user.id),
        };
      });
      if (revokedApiKeys > 0) evictUser(user.id);
      await audit({ tenantId: principal.teamId ?? null, actorId: user.id, action: "auth.password_change", target: `user:${user.id}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null, details: { revokedSessions, revokedApiKeys } });
      return { revokedSessions, revokedApiKeys };
    },

    /**
     * Signs the user out everywhere: ends every session (the current one too, and with them
     * their refresh-token families) and, with `includeApiKeys`, revokes every API key of the user.
     */
    async signOutEverywhere(principal: Principal, input: { includeApiKeys?: boolean | undefined } = {}, meta: RequestMeta = {}) {
      const at = now();
      const { endedChallenges, ...result } = await stores.transaction(async (tx) => ({
        revokedSessions: await tx.refreshTokens.revokeUserSessions(principal.userId, "signed_out_everywhere", at),
        revokedApiKeys: input.includeApiKeys ? await tx.apiKeys.revokeUserKeys(principal.userId, at) : 0,
        endedChallenges: await tx.flows.deleteForUser(principal.userId),
      }));
      evictUser(principal.userId);
      await audit({ tenantId: principal.teamId ?? null, actorId: principal.userId, action: "auth.sign_out_everywhere", target: `user:${principal.userId}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null, details: { ...result, endedChallenges } });
      return result;
    },

    /**
     * Forgets what this process caches about a user's credentials, so an API key of a user just
     * erased (`eraseUserData`) or changed outside this service stops working now rather than
     * after `apiKeyCacheTtlMs`. Other processes drop it within that TTL.
     *
     * @example
     * await eraseUserData(db, userId, [authDataRights(), auditDataRights()]);
     * auth.evictUser(userId);
     */
    evictUser,

    /**
     * Changes a member's role. The team always keeps an owner: demoting the last one is refused
     * with 409 `last_owner`.
     */
    async setMemberRole(teamId: string, userId: string, role: Role, meta: RequestMeta & { actorId?: string } = {}) {
      const parsedRole = Role.safeParse(role);
      if (!parsedRole.success) throw new AuthError("invalid_request", "Unknown role");
      try {
        if (!(await stores.teams.setRole(teamId, userId, parsedRole.data))) throw notFound("Member");
      } catch (error) {
        if (error instanceof LastOwnerError) throw new AuthError("last_owner", "A team must keep at least one owner");
        throw error;
      }
      keyCache.evict((cached) => cached.key.userId === userId && cached.key.teamId === teamId);
      await audit({ tenantId: teamId, actorId: meta.actorId ?? null, action: "team.role_change", target: `user:${userId}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null, details: { role: parsedRole.data } });
    },

    /**
     * Removes a member from a team and revokes their API keys there (a later re-invite does not
     * bring them back). The last owner cannot be removed: 409 `last_owner`.
     */
    async removeMember(teamId: string, userId: string, meta: RequestMeta & { actorId?: string } = {}) {
      try {
        if (!(await stores.teams.removeMember(teamId, userId, now()))) throw notFound("Member");
      } catch (error) {
        if (error instanceof LastOwnerError) throw new AuthError("last_owner", "A team must keep at least one owner");
        throw error;
      }
      keyCache.evict((cached) => cached.key.userId === userId && cached.key.teamId === teamId);
      await audit({ tenantId: teamId, actorId: meta.actorId ?? null, action: "team.member_remove", target: `user:${userId}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null });
    },

    async listSessions(principal: Principal) {
      const sessions = await stores.refreshTokens.listActiveSessions(principal.userId, now());
      return sessions.map((s) => sessionView(s, principal.sessionId));
    },

    async revokeSession(principal: Principal, sessionId: string, meta: RequestMeta = {}) {
      const session = await stores.refreshTokens.findSession(sessionId);
      if (!session || session.userId !== principal.userId || session.revokedAt !== null) throw notFound("Session");
      await stores.refreshTokens.revokeSession(session.id, "revoked_by_user", now());
      await audit({ tenantId: principal.teamId ?? null, actorId: principal.userId, action: "auth.session_revoke", target: `session:${session.id}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null });
    },

    /** The teams the principal's user belongs to, with roles and permissions. */
    async memberships(principal: Principal) {
      const rows = await stores.teams.memberships(principal.userId);
      return rows.map((m) => ({ teamId: m.teamId, name: m.teamName, personal: m.personal, role: m.role, permissions: permissionsForRole(m.role) }));
    },

    async createApiKey(
      principal: Principal,
      input: { name: string; scopes: string[]; expiresAt?: Date | undefined },
      meta: RequestMeta = {},
    ): Promise<ApiKeyView & { key: string }> {
      if (!principal.teamId) throw new AuthError("forbidden", "API keys belong to a team; sign in to one");
      const held = new Set(principal.scopes);
      // A key can only carry rights its creator holds right now: scopes narrow, never widen.
      const missing = input.scopes.find((s) => !held.has(s));
      if (missing) throw new AuthError("forbidden", `Missing permission ${missing}`, { details: { missing } });
      const at = now();
      if (input.expiresAt && input.expiresAt.getTime() <= at.getTime()) {
        throw new AuthError("invalid_request", "expiresAt must be in the future");
      }
      const minted = mintApiKey();
      const record: ApiKeyRecord = {
        id: randomUUID(),
        prefix: minted.prefix,
        secretHash: minted.secretHash,
        userId: principal.userId,
        teamId: principal.teamId,
        name: input.name,
        scopes: [...new Set(input.scopes)],
        createdAt: at,
        expiresAt: input.expiresAt ?? null,
        revokedAt: null,
        lastUsedAt: null,
      };
      await stores.apiKeys.create(record);
      await audit({ tenantId: principal.teamId, actorId: principal.userId, action: "api_key.create", target: `api_key:${record.id}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null, details: { scopes: record.scopes } });
      return { ...toKeyView(record), key: minted.key };
    },

    /** Keys of the principal in its team; with `team:manage`, every key of the team. */
    async listApiKeys(principal: Principal): Promise<ApiKeyView[]> {
      if (!principal.teamId) return [];
      const all = principal.scopes.includes("team:manage");
      return (await stores.apiKeys.list(principal.teamId, all ? undefined : principal.userId)).map(toKeyView);
    },

    async revokeApiKey(principal: Principal, id: string, meta: RequestMeta = {}) {
      const key = await stores.apiKeys.findById(id);
      const mayRevoke =
        key &&
        key.revokedAt === null &&
        key.teamId === principal.teamId &&
        (key.userId === principal.userId || principal.scopes.includes("team:manage"));
      // Keys of other tenants are reported missing, never forbidden.
      if (!key || !mayRevoke) throw notFound("API key");
      await stores.apiKeys.revoke(key.id, now());
      keyCache.delete(key.prefix);
      await audit({ tenantId: key.teamId, actorId: principal.userId, action: "api_key.revoke", target: `api_key:${key.id}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null });
    },

    /** Verifies an API key and returns its principal; throws 401 `invalid_api_key` otherwise. */
    async verifyApiKey(presented: string): Promise<Principal> {
      const invalid = (message = "Invalid API key") =>
        new AuthError("invalid_api_key", message);
      const parsedKey = parseApiKey(presented);
      if (!parsedKey) throw invalid();
      let found = keyCache.get(parsedKey.prefix);
      if (!found) {
        found = await stores.apiKeys.findForVerification(parsedKey.prefix);
        if (found && found.key.revokedAt === null) keyCache.set(parsedKey.prefix, found);
      }
      // Unknown prefixes compare against a dummy hash, so both paths do the same work.
      if (!secretMatches(parsedKey.secret, found?.key.secretHash) || !found) throw invalid();
      const { key, ownerRole } = found;
      const at = now();
      if (key.revokedAt !== null) throw invalid("API key revoked");
      if (key.expiresAt && key.expiresAt.getTime() <= at.getTime()) throw invalid("API key expired");
      if (!ownerRole) throw invalid("API key owner is no longer a member of its team");
      // Writing last_used_at on every request would cost a write per call; once per interval is enough.
      const touched = lastTouched.get(key.id) ?? key.lastUsedAt?.getTime() ?? Number.NEGATIVE_INFINITY;
      if (at.getTime() - touched >= config.apiKeyTouchIntervalMs) {
        lastTouched.set(key.id, at.getTime());
        if (lastTouched.size > 100_000) lastTouched.clear();
        await stores.apiKeys.touch(key.id, at);
      }
      return { userId: key.userId, teamId: key.teamId, via: "api_key", scopes: effectiveScopes(key.scopes, ownerRole), apiKeyId: key.id };
    },

    /**
     * Verifies an access token and returns its principal. The session must still be live, and the
     * scopes are the permissions of the user's current role in the token's team.
     */
    async verifyAccessToken(token: string): Promise<Principal> {
      const claims = await accessTokens.verify(token);
      const [session, role] = await Promise.all([
        stores.refreshTokens.findSession(claims.sessionId),
        claims.teamId ? stores.teams.roleOf(claims.userId, claims.teamId) : Promise.resolve(undefined),
      ]);
      if (!session || session.userId !== claims.userId || !sessionIsLive(session, now())) {
        throw new AuthError("session_revoked", "The session of this token has ended");
      }
      return {
        userId: claims.userId,
        ...(claims.teamId && role ? { teamId: claims.teamId } : {}),
        via: "jwt",
        scopes: permissionsForRole(role),
        sessionId: claims.sessionId,
      };
    },

    async listFactors(principal: Principal) {
      const factors = await stores.mfa.factors(principal.userId);
      return {
        factors: factors.map((f) => ({ id: f.id, kind: f.kind, label: f.label, confirmed: f.confirmedAt !== null, createdAt: f.createdAt.toISOString() })),
        recoveryCodesLeft: await stores.mfa.remainingRecoveryCodes(principal.userId),
      };
    },

    async enrolTotp(principal: Principal, label?: string) {
      const user = await requireUser(principal);
      const { secret, uri } = newTotpSecret(user.email, config.totpIssuer);
      const id = randomUUID();
      await stores.mfa.addFactor(
        { id, userId: user.id, kind: "totp", label: label ?? "Authenticator app", secret, phone: null, credentialId: null, publicKey: null, counter: 0, transports: [], lastUsedStep: 0, confirmedAt: null },
        now(),
      );
      return { factorId: id, secret, otpauthUri: uri };
    },

    /** Confirms an enrolment with a first code; the first confirmed factor also yields recovery codes. */
    async confirmTotp(principal: Principal, factorId: string, code: string, meta: RequestMeta = {}) {
      const factor = await stores.mfa.findFactor(factorId);
      if (!factor || factor.userId !== principal.userId || factor.kind !== "totp" || factor.confirmedAt) throw notFound("Factor");
      const step = factor.secret ? matchTotpStep(factor.secret, code.trim(), now()) : undefined;
      if (step === undefined || !(await stores.mfa.advanceTotpStep(factor.id, step))) {
        throw new AuthError("invalid_enrolment_code", "The code is not valid");
      }
      return confirmFactor(principal, factor, meta);
    },

    async enrolSms(principal: Principal, phone: string) {
      const sender = smsSender();
      if (!PHONE_NUMBER.test(phone)) throw new AuthError("invalid_request", "Phone number must be in E.164 form, e.g. +447700900123");
      await claimSmsSend(principal.userId, phone);
      const id = randomUUID();
      const at = now();
      const code = newSmsCode();
      await stores.mfa.addFactor(
        { id, userId: principal.userId, kind: "sms", label: `SMS ${phone.slice(0, 3)}…${phone.slice(-2)}`, secret: null, phone, credentialId: null, publicKey: null, counter: 0, transports: [], lastUsedStep: 0, confirmedAt: null },
        at,
      );
      await stores.flows.put({ id: `sms_enrol:${id}`, kind: "sms_enrol", userId: principal.userId, data: { codeHash: sha256Hex(code) }, attempts: 0, expiresAt: new Date(at.getTime() + config.mfaChallengeTtlSeconds * 1000) }, at);
      await sender.send(phone, `Your keen verification code is ${code}`);
      return { factorId: id };
    },

    async confirmSms(principal: Principal, factorId: string, code: string, meta: RequestMeta = {}) {
      const factor = await stores.mfa.findFactor(factorId);
      if (!factor || factor.userId !== principal.userId || factor.kind !== "sms" || factor.confirmedAt) throw notFound("Factor");
      const flowId = `sms_enrol:${factor.id}`;
      // Counted before the comparison, atomically: concurrent guesses get mfaMaxAttempts checks in all.
      const flow = await stores.flows.claimAttempt(flowId, "sms_enrol", config.mfaMaxAttempts, now());
      if (!flow || flow.userId !== principal.userId || !digestsEqual(sha256Hex(code.trim()), String(flow.data.codeHash))) {
        if (flow && flow.attempts >= config.mfaMaxAttempts) await stores.flows.delete(flowId);
        throw new AuthError("invalid_enrolment_code", "The code is not valid");
      }
      await stores.flows.delete(flowId);
      return confirmFactor(principal, factor, meta);
    },

    async webauthnRegistrationOptions(principal: Principal) {
      const options = webauthnConfig();
      const user = await requireUser(principal);
      const request = await webauthn.registrationOptions(options, user, await stores.mfa.factors(user.id));
      const at = now();
      await stores.flows.put({ id: sha256Hex(request.challenge), kind: "webauthn_register", userId: user.id, data: {}, attempts: 0, expiresAt: new Date(at.getTime() + config.mfaChallengeTtlSeconds * 1000) }, at);
      return request;
    },

    async webauthnRegister(principal: Principal, response: webauthn.WebAuthnResponse, label: string | undefined, meta: RequestMeta = {}) {
      const options = webauthnConfig();
      const challenge = webauthn.challengeOf(response);
      const flow = challenge ? await stores.flows.take(sha256Hex(challenge), "webauthn_register", now()) : undefined;
      if (!challenge || !flow || flow.userId !== principal.userId) throw new AuthError("invalid_registration_challenge", "Registration challenge is invalid or expired");
      const verified = await webauthn.verifyRegistration(options, response, challenge).catch(() => undefined);
      if (!verified) throw new AuthError("webauthn_failed", "The security key response could not be verified");
      const id = randomUUID();
      const at = now();
      try {
        await stores.mfa.addFactor(
          { id, userId: principal.userId, kind: "webauthn", label: label ?? "Security key", secret: null, phone: null, credentialId: verified.credentialId, publicKey: verified.publicKey, counter: verified.counter, transports: verified.transports, lastUsedStep: 0, confirmedAt: null },
          at,
        );
      } catch (error) {
        if (error instanceof DuplicateError) throw new AuthError("credential_exists", "That security key is already registered");
        throw error;
      }
      const factor = (await stores.mfa.findFactor(id))!;
      return { factorId: id, ...(await confirmFactor(principal, factor, meta)) };
    },

    async removeFactor(principal: Principal, factorId: string, password: string, meta: RequestMeta = {}) {
      const user = await requireUser(principal);
      const factor = await stores.mfa.findFactor(factorId);
      if (!factor || factor.userId !== user.id) throw notFound("Factor");
      if (user.passwordHash) await checkPassword(user, password, meta);
      await stores.mfa.deleteFactor(factor.id);
      if ((await confirmedFactors(user.id)).length === 0) await stores.mfa.replaceRecoveryCodes(user.id, [], now());
      await audit({ tenantId: principal.teamId ?? null, actorId: user.id, action: "mfa.disable", target: `mfa_factor:${factor.id}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null, details: { kind: factor.kind } });
    },

    async regenerateRecoveryCodes(principal: Principal, password: string, meta: RequestMeta = {}) {
      const user = await requireUser(principal);
      if (user.passwordHash) await checkPassword(user, password, meta);
      if ((await confirmedFactors(user.id)).length === 0) throw new AuthError("mfa_not_enrolled", "Enrol a second factor first");
      const codes = await issueRecoveryCodes(user.id);
      await audit({ tenantId: principal.teamId ?? null, actorId: user.id, action: "mfa.recovery_codes", target: `user:${user.id}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null });
      return codes;
    },

    /**
     * Where to send the browser to sign in with a provider (authorization code + PKCE + state),
     * and `browserBinding`: a secret the caller must keep in the initiating browser (the router
     * sets it as an HttpOnly, SameSite cookie) and hand back to `oauthCallback`. The state and
     * the PKCE verifier are only usable together with it, so a callback URL carrying someone
     * else's code and state signs no other browser in (login CSRF).
     */
    async oauthStart(providerName: string): Promise<{ url: string; browserBinding: string; expiresInSeconds: number }> {
      const provider = providers.get(providerName as OAuthProviderName);
      if (!provider) throw notFound("OAuth provider");
      const state = randomToken(24);
      const verifier = randomToken(48);
      const browserBinding = randomToken(32);
      const at = now();
      const ttl = config.oauthStateTtlSeconds;
      await stores.flows.put(
        { id: sha256Hex(state), kind: `oauth:${provider.name}`, userId: null, data: { verifier, bindingHash: sha256Hex(browserBinding) }, attempts: 0, expiresAt: new Date(at.getTime() + ttl * 1000) },
        at,
      );
      return { url: authorizeUrl(provider, state, verifier), browserBinding, expiresInSeconds: ttl };
    },

    /**
     * Finishes an OAuth sign-in: checks state, exchanges the code with PKCE, then signs in the
     * linked user, links an existing user by verified email, or creates one.
     */
    async oauthCallback(
      providerName: string,
      input: { code: string; state: string; browserBinding: string | undefined },
      meta: RequestMeta = {},
    ): Promise<LoginResult> {
      const provider = providers.get(providerName as OAuthProviderName);
      if (!provider) throw notFound("OAuth provider");
      const invalidState = () => new AuthError("invalid_state", "OAuth state is invalid or expired");
      const kind = `oauth:${provider.name}`;
      const stateId = sha256Hex(input.state);
      const pending = await stores.flows.peek(stateId, kind, now());
      // Checked before the state is consumed: a browser that did not start this sign-in cannot burn it either.
      if (!pending || typeof pending.data.bindingHash !== "string" || !input.browserBinding || !digestsEqual(sha256Hex(input.browserBinding), pending.data.bindingHash)) {
        throw new AuthError("invalid_state", "This sign-in was not started in this browser, or it expired; start again");
      }
      const flow = await stores.flows.take(stateId, kind, now());
      const verifier = flow?.data.verifier;
      if (typeof verifier !== "string") throw invalidState();
      const profile = await fetchProfile(provider, input.code, verifier, fetchImpl);
      const at = now();
      const linked = await stores.oauthAccounts.find(provider.name, profile.subject);
      let user = linked ? await stores.users.findById(linked.userId) : undefined;
      if (!user) {
        if (!profile.email || !profile.emailVerified) {
          throw new AuthError("email_not_verified", "The provider did not confirm a verified email address");
        }
        const email = profile.email.normalize("NFKC").trim().toLowerCase();
        const existing = await stores.users.findByEmail(email);
        if (existing && !existing.emailVerified) {
          // Account pre-hijacking: whoever signed up with this address never proved they own it,
          // and linking would hand the provider's owner an account whose password, sessions and
          // keys someone else may hold. Refuse; the owner of the address proves it first.
          await audit({ tenantId: null, actorId: existing.id, action: "auth.oauth_link", target: `user:${existing.id}`, result: "denied", ip: meta.ip ?? null, requestId: meta.requestId ?? null, details: { provider: provider.name, reason: "email_unverified" } });
          throw new AuthError(
            "account_email_unverified",
            "An account with this email exists but its address was never verified; sign in to it with its password and verify the address before linking a provider",
          );
        }
        const created = await stores.transaction(async (tx) => {
          let target = existing;
          if (!target) {
            const userId = randomUUID();
            const teamId = randomUUID();
            target = await tx.users.create({ id: userId, email, emailVerified: true, passwordHash: null, displayName: profile.name }, at);
            await tx.teams.create({ id: teamId, name: "Personal", personal: true }, at);
            await tx.teams.addMember(teamId, userId, "owner", at);
          }
          await tx.oauthAccounts.link({ provider: provider.name, subject: profile.subject, userId: target.id, email }, at);
          return target;
        });
        user = created;
        await audit({ tenantId: null, actorId: user.id, action: "auth.oauth_link", target: `user:${user.id}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null, details: { provider: provider.name, created: !existing } });
      }
      const teamId = await chooseTeam(user.id, undefined);
      return afterFirstFactor(user, teamId, meta, `oauth:${provider.name}`);
    },
  };

  async function confirmFactor(principal: Principal, factor: MfaFactorRecord, meta: RequestMeta): Promise<{ recoveryCodes?: string[] }> {
    const hadFactors = (await confirmedFactors(principal.userId)).length > 0;
    await stores.mfa.confirmFactor(factor.id, now());
    await audit({ tenantId: principal.teamId ?? null, actorId: principal.userId, action: "mfa.enrol", target: `mfa_factor:${factor.id}`, result: "success", ip: meta.ip ?? null, requestId: meta.requestId ?? null, details: { kind: factor.kind } });
    if (hadFactors && (await stores.mfa.remainingRecoveryCodes(principal.userId)) > 0) return {};
    return { recoveryCodes: await issueRecoveryCodes(principal.userId) };
  }

  return service;
}
