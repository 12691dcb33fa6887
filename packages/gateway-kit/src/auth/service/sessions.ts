import { randomUUID } from "node:crypto";
import { AuthError } from "../../errors.js";
import type { Principal } from "../../principal.js";
import type { AuthContext } from "./context.js";
import type { LoginSubject } from "../login-limiter.js";
import { Email } from "../password.js";
import { permissionsForRole } from "../permissions.js";
import { randomToken, sha256Hex } from "../secrets.js";
import { DuplicateError, type SessionRecord } from "../stores.js";
import type { LoginResult, RequestMeta, SessionView, TokenPair } from "./types.js";

/** Passwords and login sessions: sign-up, login, refresh, sign-out, password change, access tokens. */
export interface PasswordSessionService {
  signup(
    input: { email: string; password: string; displayName?: string | undefined },
    meta?: RequestMeta,
  ): Promise<{ user: { id: string; email: string } } & TokenPair>;
  login(input: { email: string; password: string; teamId?: string | undefined }, meta?: RequestMeta): Promise<LoginResult>;
  refresh(refreshToken: string, meta?: RequestMeta): Promise<TokenPair>;
  logout(input: { principal?: Principal | undefined; refreshToken?: string | undefined }, meta?: RequestMeta): Promise<void>;
  changePassword(
    principal: Principal,
    input: { currentPassword: string; newPassword: string },
    meta?: RequestMeta,
  ): Promise<{ revokedSessions: number; revokedApiKeys: number }>;
  signOutEverywhere(
    principal: Principal,
    input?: { includeApiKeys?: boolean | undefined },
    meta?: RequestMeta,
  ): Promise<{ revokedSessions: number; revokedApiKeys: number }>;
  listSessions(principal: Principal): Promise<SessionView[]>;
  revokeSession(principal: Principal, sessionId: string, meta?: RequestMeta): Promise<void>;
  verifyAccessToken(token: string): Promise<Principal>;
}


/**
 * The one spelling of an email the service stores, looks up and counts lockouts under, whatever
 * the caller passed (the router has normalised it already; a host calling the service directly
 * may not have): otherwise `Ada@x.com` and `ada@x.com` would be two accounts and two lockouts.
 */
function canonicalEmail(email: string): string {
  const parsed = Email.safeParse(email);
  if (!parsed.success) throw new AuthError("invalid_request", "Invalid email address");
  return parsed.data;
}

export function createPasswordSessionService(context: AuthContext): PasswordSessionService {
  const { config, stores, now, hasher, limiter, accessTokens, audit, notFound, requireUser, checkPassword, evictUser, startSession, chooseTeam, afterFirstFactor } = context;

  function sessionView(session: SessionRecord, currentSessionId: string | undefined): SessionView {
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

  return {
    async signup(input: { email: string; password: string; displayName?: string | undefined }, meta: RequestMeta = {}) {
      const email = canonicalEmail(input.email);
      const passwordHash = await hasher.hash(input.password);
      const at = now();
      const userId = randomUUID();
      const teamId = randomUUID();
      try {
        await stores.transaction(async (tx) => {
          await tx.users.create(
            { id: userId, email, emailVerified: false, passwordHash, displayName: input.displayName ?? null },
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
      await audit(meta, { tenantId: teamId, actorId: userId, action: "auth.signup", target: `user:${userId}`, result: "success" });
      const pair = await startSession(userId, teamId, meta);
      return { user: { id: userId, email }, ...pair };
    },

    async login(input: { email: string; password: string; teamId?: string | undefined }, meta: RequestMeta = {}): Promise<LoginResult> {
      // An unparseable address is counted like a wrong one: no account has it.
      const email = Email.safeParse(input.email).data ?? input.email;
      const subject: LoginSubject = { account: email, ip: meta.ip };
      await limiter.begin(subject);
      const user = await stores.users.findByEmail(email);
      let ok = false;
      if (user?.passwordHash) ok = await hasher.verify(user.passwordHash, input.password);
      else await hasher.verifyDummy(input.password);
      if (!user || !ok) {
        // Already counted by begin().
        await audit(meta, { tenantId: null, actorId: user?.id ?? null, action: "auth.login", target: user ? `user:${user.id}` : null, result: "failure" });
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
        await audit(meta, { tenantId: session.teamId, actorId: session.userId, action: "auth.refresh_reuse", target: `session:${session.id}`, result: "denied" });
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
        await audit(meta, { tenantId: session.teamId, actorId: session.userId, action: "auth.refresh_reuse", target: `session:${session.id}`, result: "denied" });
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
      await audit(meta, { tenantId: session.teamId, actorId: session.userId, action: "auth.logout", target: `session:${session.id}`, result: "success" });
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
      await audit(meta, { tenantId: principal.teamId ?? null, actorId: user.id, action: "auth.password_change", target: `user:${user.id}`, result: "success", details: { revokedSessions, revokedApiKeys } });
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
      await audit(meta, { tenantId: principal.teamId ?? null, actorId: principal.userId, action: "auth.sign_out_everywhere", target: `user:${principal.userId}`, result: "success", details: { ...result, endedChallenges } });
      return result;
    },

    async listSessions(principal: Principal) {
      const sessions = await stores.refreshTokens.listActiveSessions(principal.userId, now());
      return sessions.map((s) => sessionView(s, principal.sessionId));
    },

    async revokeSession(principal: Principal, sessionId: string, meta: RequestMeta = {}) {
      const session = await stores.refreshTokens.findSession(sessionId);
      if (!session || session.userId !== principal.userId || session.revokedAt !== null) throw notFound("Session");
      await stores.refreshTokens.revokeSession(session.id, "revoked_by_user", now());
      await audit(meta, { tenantId: principal.teamId ?? null, actorId: principal.userId, action: "auth.session_revoke", target: `session:${session.id}`, result: "success" });
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
  };
}
