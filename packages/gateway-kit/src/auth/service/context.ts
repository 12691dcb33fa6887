// What every part of the auth service shares: options, stores, the clock, the audit sink and the
// steps more than one concern takes (checking a password, starting a session, confirming a factor).
import { randomUUID } from "node:crypto";
import type * as z from "zod";
import { noAudit, type AuditEventInput } from "../../audit/index.js";
import { AuthError } from "../../errors.js";
import { normaliseIp } from "../../http/index.js";
import type { Principal } from "../../principal.js";
import { ApiKeyCache } from "../api-keys.js";
import type { AuthServiceOptions } from "../auth-service.js";
import { createAccessTokens, type AccessTokens } from "../jwt.js";
import { createLoginLimiter, type LoginLimiter, type LoginSubject } from "../login-limiter.js";
import { resolveProvider, type OAuthProvider, type OAuthProviderName } from "../oauth.js";
import { createPasswordHasher, type PasswordHasher } from "../password.js";
import type { Role } from "../permissions.js";
import { randomBase32, randomToken, sha256Hex } from "../secrets.js";
import type { SmsSender } from "../sms.js";
import type { ApiKeyRecord, AuthStores, AuthFlowRecord, MfaFactorRecord, UserRecord } from "../stores.js";
import { matchTotpStep } from "../totp.js";
import { createTotpSecretBox, type TotpSecretBox } from "../totp-secrets.js";
import type * as webauthn from "../webauthn.js";
import type { LoginResult, Reauthentication, RequestMeta, TokenPair } from "./types.js";

export type AuthConfig = z.output<typeof AuthServiceOptions>;

/** An audit event of the auth service; where the request came from is added from its `RequestMeta`. */
export type AuthAuditEvent = Omit<AuditEventInput, "ip" | "requestId">;

export interface CachedKey {
  key: ApiKeyRecord;
  ownerRole: Role | undefined;
}

const RECOVERY_CODE_COUNT = 10;

/** Internal: one send cap is full (rolls the send's other counts back). */
class CapReached extends Error {
  constructor(readonly key: string) {
    super(key);
  }
}

export type AuthContext = ReturnType<typeof createAuthContext>;

export function createAuthContext(config: AuthConfig) {
  const { stores } = config;
  const now = config.now ?? (() => new Date());
  const auditSink = config.audit ?? noAudit;
  const hasher: PasswordHasher = createPasswordHasher(config.passwordHashing ?? {});
  const limiter: LoginLimiter = createLoginLimiter(stores.loginAttempts, config.loginLimiter ?? {}, now);
  const accessTokens: AccessTokens = createAccessTokens({
    keys: config.keys,
    issuer: config.issuer,
    audience: config.audience,
    ttlSeconds: config.accessTokenTtlSeconds,
    now,
  });
  const totpSecrets: TotpSecretBox = createTotpSecretBox(config.totpEncryption);
  const keyCache = new ApiKeyCache<CachedKey>(config.apiKeyCacheTtlMs, 10_000, () => now().getTime());
  const providers = new Map<OAuthProviderName, OAuthProvider>();
  for (const [name, providerOptions] of Object.entries(config.oauth ?? {})) {
    if (providerOptions) providers.set(name as OAuthProviderName, resolveProvider(name as OAuthProviderName, providerOptions));
  }

  /** Records an event with where its request came from; a failing sink never fails the operation. */
  async function audit(meta: RequestMeta, event: AuthAuditEvent): Promise<void> {
    try {
      await auditSink.record({ ...event, ip: meta.ip ?? null, requestId: meta.requestId ?? null });
    } catch (error) {
      config.onAuditError?.(error);
    }
  }

  const unauthenticated = (message = "Authentication required") => new AuthError("unauthenticated", message);
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
      await audit(meta, { tenantId: null, actorId: user.id, action: "auth.password_check", target: `user:${user.id}`, result: "failure" });
      throw new AuthError("invalid_password", "Current password is incorrect");
    }
    await limiter.release(subject);
  }

  /**
   * The one gate of every operation that changes how an account signs in (factors, recovery
   * codes) or mints a credential that outlives the session (API keys): a stolen access token
   * must not be enough. Only a user's own session qualifies, never an API key. An account with
   * a password gives it (checked through the login limiter, so guesses are counted); one without
   * proves a sign-in at most `reauthMaxAgeSeconds` old, judged by when its session began (a
   * refresh does not renew that).
   */
  async function reauthenticate(principal: Principal, proof: Reauthentication, meta: RequestMeta): Promise<UserRecord> {
    if (principal.via !== "jwt" || !principal.sessionId) {
      throw new AuthError("forbidden", "This needs a signed-in user, not an API key");
    }
    const user = await requireUser(principal);
    const refuse = async (reason: string, message: string) => {
      await audit(meta, { tenantId: principal.teamId ?? null, actorId: user.id, action: "auth.reauthenticate", target: `user:${user.id}`, result: "denied", details: { reason } });
      const details = reason === "recent_sign_in_required" ? { reason, maxAgeSeconds: config.reauthMaxAgeSeconds } : { reason };
      return new AuthError("reauthentication_required", message, { details });
    };
    if (user.passwordHash) {
      // No password is not a guess: refused without counting against the owner's lockout.
      if (!proof.password) throw await refuse("password_required", "Confirm your password to go on");
      await checkPassword(user, proof.password, meta);
      return user;
    }
    const session = await stores.refreshTokens.findSession(principal.sessionId);
    const ageMs = session ? now().getTime() - session.createdAt.getTime() : Number.POSITIVE_INFINITY;
    if (!session || session.userId !== user.id || session.revokedAt !== null || ageMs > config.reauthMaxAgeSeconds * 1000) {
      throw await refuse("recent_sign_in_required", "Sign in again to go on: this needs a recent sign-in");
    }
    return user;
  }

  /** A fixed window (`SendWindow`) as the start of the window `now` falls in. */
  function windowStart(window: { windowSeconds: number }): Date {
    const atMs = now().getTime();
    return new Date(Math.floor(atMs / (window.windowSeconds * 1000)) * window.windowSeconds * 1000);
  }

  /**
   * Counts one send against every rule at once, in one transaction; the key of the first full
   * one when refused (and then none of the rules is counted).
   */
  async function claimCounts(rules: Array<{ key: string; limit: number; windowStart: Date }>): Promise<string | undefined> {
    return stores
      .transaction(async (tx) => {
        for (const rule of rules) {
          // Throwing rolls the other counts of this send back.
          if (!(await tx.counters.hit(rule.key, rule.windowStart, rule.limit))) throw new CapReached(rule.key);
        }
        return undefined;
      })
      .catch((error: unknown) => {
        if (error instanceof CapReached) return error.key;
        throw error;
      });
  }

  /** Counts one SMS send against each cap at once; refuses with `sms_limit` if any is full. */
  async function claimSmsSend(userId: string, phone: string, challengeId?: string): Promise<void> {
    const limits = config.smsLimits;
    const refusedBy = await claimCounts([
      { key: "sms:all", limit: limits.global.limit, windowStart: windowStart(limits.global) },
      // Hashed: the counter table need not hold phone numbers.
      { key: `sms:phone:${sha256Hex(phone)}`, limit: limits.perNumber.limit, windowStart: windowStart(limits.perNumber) },
      { key: `sms:user:${userId}`, limit: limits.perAccount.limit, windowStart: windowStart(limits.perAccount) },
      ...(challengeId ? [{ key: `sms:challenge:${challengeId}`, limit: limits.perChallenge, windowStart: new Date(0) }] : []),
    ]);
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
      await audit(meta, { tenantId: teamId, actorId: user.id, action: "auth.login", target: `session:${pair.sessionId}`, result: "success", details: { via } });
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

  async function loadChallenge(challengeToken: string): Promise<{ flow: AuthFlowRecord; user: UserRecord }> {
    const flow = await stores.flows.peek(sha256Hex(challengeToken), "mfa_login", now());
    if (!flow || !flow.userId) throw new AuthError("invalid_challenge", "MFA challenge is invalid or expired");
    const user = await stores.users.findById(flow.userId);
    if (!user) throw new AuthError("invalid_challenge", "MFA challenge is invalid or expired");
    return { flow, user };
  }

  /**
   * The step a code matches on a TOTP factor, if it is newer than the last accepted one (no
   * replays). An accepted use re-seals a plain or retired-key secret with the current key.
   */
  async function acceptTotp(factor: MfaFactorRecord, code: string): Promise<boolean> {
    if (factor.kind !== "totp" || !factor.secret) return false;
    const stored = { secret: factor.secret, keyId: factor.secretKeyId };
    const secret = totpSecrets.open(factor.id, stored);
    const step = matchTotpStep(secret, code.trim(), now());
    if (step === undefined || !(await stores.mfa.advanceTotpStep(factor.id, step))) return false;
    if (totpSecrets.isStale(stored)) {
      const next = totpSecrets.seal(factor.id, secret);
      if (next.keyId !== null) await stores.mfa.resealSecret(factor.id, stored, { secret: next.secret, keyId: next.keyId });
    }
    return true;
  }

  function normaliseRecoveryCode(code: string): string {
    return code.toLowerCase().replace(/[\s-]/g, "");
  }

  async function issueRecoveryCodes(userId: string): Promise<string[]> {
    const codes = Array.from({ length: RECOVERY_CODE_COUNT }, () => randomBase32(16).replace(/(.{4})(?!$)/g, "$1-"));
    await stores.mfa.replaceRecoveryCodes(userId, codes.map((c) => sha256Hex(normaliseRecoveryCode(c))), now());
    return codes;
  }

  async function confirmFactor(principal: Principal, factor: MfaFactorRecord, meta: RequestMeta): Promise<{ recoveryCodes?: string[] }> {
    const hadFactors = (await confirmedFactors(principal.userId)).length > 0;
    await stores.mfa.confirmFactor(factor.id, now());
    await audit(meta, { tenantId: principal.teamId ?? null, actorId: principal.userId, action: "mfa.enrol", target: `mfa_factor:${factor.id}`, result: "success", details: { kind: factor.kind } });
    if (hadFactors && (await stores.mfa.remainingRecoveryCodes(principal.userId)) > 0) return {};
    return { recoveryCodes: await issueRecoveryCodes(principal.userId) };
  }

  function webauthnConfig(): webauthn.WebAuthnOptions {
    if (!config.webauthn) throw new AuthError("not_found", "WebAuthn is not enabled");
    return config.webauthn;
  }

  function smsSender(): SmsSender {
    if (!config.sms) throw new AuthError("not_found", "SMS factor is not enabled");
    return config.sms;
  }

  return {
    config,
    stores: stores as AuthStores,
    now,
    hasher,
    limiter,
    accessTokens,
    totpSecrets,
    keyCache,
    providers,
    fetchImpl: config.fetch ?? fetch,
    audit,
    unauthenticated,
    notFound,
    requireUser,
    checkPassword,
    reauthenticate,
    claimSmsSend,
    claimCounts,
    windowStart,
    evictUser,
    startSession,
    chooseTeam,
    confirmedFactors,
    afterFirstFactor,
    loadChallenge,
    acceptTotp,
    normaliseRecoveryCode,
    issueRecoveryCodes,
    confirmFactor,
    webauthnConfig,
    smsSender,
  };
}
