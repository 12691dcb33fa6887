import { GatewayError } from "../errors.js";
import type { Role } from "./permissions.js";

/** A user account; `passwordHash` is null for accounts created through OAuth only. */
export interface UserRecord {
  id: string;
  email: string;
  emailVerified: boolean;
  passwordHash: string | null;
  displayName: string | null;
  createdAt: Date;
}

/**
 * Users by id and normalised email.
 *
 * @example
 * const user = await stores.users.findByEmail("ada@example.com");
 */
export interface UserStore {
  /** Throws `DuplicateError` when the email is taken. */
  create(user: Omit<UserRecord, "createdAt">, at: Date): Promise<UserRecord>;
  findById(id: string): Promise<UserRecord | undefined>;
  findByEmail(email: string): Promise<UserRecord | undefined>;
  setPassword(id: string, passwordHash: string, at: Date): Promise<void>;
  /**
   * Marks the user's email verified; with `email`, only while the account still has exactly that
   * (normalised) address, so a proof of an old address never verifies a new one. True when marked.
   */
  markEmailVerified(id: string, email?: string): Promise<boolean>;
}

export interface TeamRecord {
  id: string;
  name: string;
  personal: boolean;
}

export interface MembershipRecord {
  teamId: string;
  userId: string;
  role: Role;
  teamName: string;
  personal: boolean;
}

/**
 * Teams and the role each user holds in them.
 *
 * @example
 * const role = await stores.teams.roleOf(userId, teamId); // "owner" | ... | undefined
 */
export interface TeamStore {
  create(team: TeamRecord, at: Date): Promise<TeamRecord>;
  addMember(teamId: string, userId: string, role: Role, at: Date): Promise<void>;
  /**
   * Changes a member's role. Throws `LastOwnerError` when it would leave the team without an
   * owner (checked under a lock on the team, so two owners demoting each other cannot both win);
   * false when the user is not a member.
   */
  setRole(teamId: string, userId: string, role: Role): Promise<boolean>;
  /**
   * Removes a member and revokes every API key they hold in the team, atomically. Throws
   * `LastOwnerError` for the team's last owner; false when the user is not a member.
   */
  removeMember(teamId: string, userId: string, at: Date): Promise<boolean>;
  roleOf(userId: string, teamId: string): Promise<Role | undefined>;
  memberships(userId: string): Promise<MembershipRecord[]>;
}

/** A login session: the family of refresh tokens issued from one login. */
export interface SessionRecord {
  id: string;
  userId: string;
  teamId: string | null;
  createdAt: Date;
  lastSeenAt: Date;
  expiresAt: Date;
  revokedAt: Date | null;
  revokeReason: string | null;
  userAgent: string | null;
  ip: string | null;
}

export interface RefreshTokenRecord {
  id: string;
  sessionId: string;
  createdAt: Date;
  rotatedAt: Date | null;
}

/**
 * Sessions and their rotating refresh tokens (stored as hashes).
 *
 * @example
 * const found = await stores.refreshTokens.findByHash(sha256Hex(token));
 */
export interface RefreshTokenStore {
  createSession(session: Omit<SessionRecord, "revokedAt" | "revokeReason">): Promise<void>;
  addToken(token: { id: string; sessionId: string; tokenHash: string; createdAt: Date }): Promise<void>;
  findByHash(tokenHash: string): Promise<{ token: RefreshTokenRecord; session: SessionRecord } | undefined>;
  /** Marks the token rotated if it is not already; false means someone used it first. */
  markRotated(tokenId: string, at: Date): Promise<boolean>;
  touchSession(sessionId: string, at: Date): Promise<void>;
  findSession(sessionId: string): Promise<SessionRecord | undefined>;
  revokeSession(sessionId: string, reason: string, at: Date): Promise<boolean>;
  /** Revokes every active session of a user except `exceptSessionId`; returns how many. */
  revokeUserSessions(userId: string, reason: string, at: Date, exceptSessionId?: string): Promise<number>;
  listActiveSessions(userId: string, now: Date): Promise<SessionRecord[]>;
}

export interface ApiKeyRecord {
  id: string;
  prefix: string;
  secretHash: string;
  userId: string;
  teamId: string;
  name: string;
  scopes: string[];
  createdAt: Date;
  expiresAt: Date | null;
  revokedAt: Date | null;
  lastUsedAt: Date | null;
}

/**
 * API keys by prefix. `findForVerification` also returns the owner's current role, so one query
 * authenticates a request.
 *
 * @example
 * const found = await stores.apiKeys.findForVerification("k3j5h2m4n6p7");
 */
export interface ApiKeyStore {
  create(key: Omit<ApiKeyRecord, "revokedAt" | "lastUsedAt">): Promise<void>;
  findForVerification(prefix: string): Promise<{ key: ApiKeyRecord; ownerRole: Role | undefined } | undefined>;
  findById(id: string): Promise<ApiKeyRecord | undefined>;
  list(teamId: string, userId?: string): Promise<ApiKeyRecord[]>;
  revoke(id: string, at: Date): Promise<boolean>;
  /** Revokes every live key of a user (in one team, or in all); returns how many. */
  revokeUserKeys(userId: string, at: Date, teamId?: string): Promise<number>;
  touch(id: string, at: Date): Promise<void>;
}

export type FactorKind = "totp" | "webauthn" | "sms";

export interface MfaFactorRecord {
  id: string;
  userId: string;
  kind: FactorKind;
  label: string | null;
  /** A TOTP secret as stored: sealed with the key `secretKeyId` names, or plain base32 when that is null. */
  secret: string | null;
  secretKeyId: string | null;
  phone: string | null;
  credentialId: string | null;
  publicKey: string | null;
  counter: number;
  transports: string[];
  lastUsedStep: number;
  confirmedAt: Date | null;
  createdAt: Date;
}

/**
 * MFA factors and recovery codes. Methods that consume something are atomic compare-and-set
 * operations, so a TOTP step or a recovery code is accepted at most once even under concurrency.
 *
 * @example
 * const ok = await stores.mfa.advanceTotpStep(factorId, step); // false when step was used
 */
export interface MfaStore {
  addFactor(factor: Omit<MfaFactorRecord, "createdAt">, at: Date): Promise<void>;
  factors(userId: string): Promise<MfaFactorRecord[]>;
  findFactor(id: string): Promise<MfaFactorRecord | undefined>;
  findByCredentialId(credentialId: string): Promise<MfaFactorRecord | undefined>;
  confirmFactor(id: string, at: Date): Promise<void>;
  deleteFactor(id: string): Promise<boolean>;
  advanceTotpStep(id: string, step: number): Promise<boolean>;
  /** Replaces a TOTP secret's stored form (re-sealing it) only if it is still `expected`; false otherwise. */
  resealSecret(id: string, expected: { secret: string; keyId: string | null }, next: { secret: string; keyId: string }): Promise<boolean>;
  updateCounter(id: string, counter: number): Promise<boolean>;
  replaceRecoveryCodes(userId: string, codeHashes: string[], at: Date): Promise<void>;
  consumeRecoveryCode(userId: string, codeHash: string, at: Date): Promise<boolean>;
  remainingRecoveryCodes(userId: string): Promise<number>;
}

export interface OAuthAccountStore {
  find(provider: string, subject: string): Promise<{ userId: string } | undefined>;
  link(account: { provider: string; subject: string; userId: string; email: string | null }, at: Date): Promise<void>;
}

export interface LoginAttemptState {
  failures: number;
  lockedUntil: Date | null;
}

/** How `LoginAttemptStore.claim` counts: when old failures are forgotten and how long a count locks. */
export interface LoginAttemptPolicy {
  /** Failures last counted before this are forgotten (the count starts over at 1). */
  resetBefore: Date;
  /** The lockout a count of `failures` earns, in ms; 0 for none. */
  lockoutMs(failures: number): number;
}

/**
 * Failure counters behind the login brute-force limiter. An attempt is counted *before* its
 * credential is checked, in one atomic step that refuses while the key is locked, so a burst of
 * concurrent guesses cannot all pass a check made before any of them is counted.
 *
 * @example
 * const claimed = await stores.loginAttempts.claim("account:ada@example.com", now, policy);
 * if (!claimed.allowed) throw tooManyAttempts(claimed.lockedUntil);
 */
export interface LoginAttemptStore {
  get(key: string): Promise<LoginAttemptState | undefined>;
  /**
   * Atomically: refuses while `lockedUntil` is in the future; otherwise adds one failure
   * (starting over when the last is older than `policy.resetBefore`) and locks the key for
   * `policy.lockoutMs(failures)`.
   */
  claim(key: string, at: Date, policy: LoginAttemptPolicy): Promise<{ allowed: true; failures: number } | { allowed: false; lockedUntil: Date }>;
  /** Takes back one claimed failure (the credential was right); lifts the lock when the count falls below `threshold`. */
  release(key: string, threshold: number): Promise<void>;
  clear(key: string): Promise<void>;
}

/**
 * Fixed-window counters (SMS sends per account, per number, in all), each step one atomic
 * conditional update.
 *
 * @example
 * const ok = await stores.counters.hit("sms:phone:+447700900123", windowStart, 5);
 */
export interface CounterStore {
  /** Adds one to `key`'s count in the window starting at `windowStart`, unless it already reached `limit`; true when counted. */
  hit(key: string, windowStart: Date, limit: number): Promise<boolean>;
}

export interface AuthFlowRecord {
  id: string;
  kind: string;
  userId: string | null;
  data: Record<string, unknown>;
  attempts: number;
  expiresAt: Date;
}

/**
 * Short-lived single-use state (MFA challenges, OAuth state, WebAuthn challenges).
 *
 * @example
 * const flow = await stores.flows.take(stateHash, "oauth", now); // deleted when returned
 */
export interface AuthFlowStore {
  put(flow: AuthFlowRecord, at: Date): Promise<void>;
  /** Reads an unexpired flow of that kind without consuming it. */
  peek(id: string, kind: string, now: Date): Promise<AuthFlowRecord | undefined>;
  /** Deletes and returns an unexpired flow of that kind; undefined when absent, expired or already taken. */
  take(id: string, kind: string, now: Date): Promise<AuthFlowRecord | undefined>;
  update(id: string, data: Record<string, unknown>): Promise<void>;
  /**
   * Counts one attempt on an unexpired flow of that kind, atomically, unless it already has
   * `maxAttempts`; returns the flow as it is after counting, or undefined when refused. Count
   * first, then check the code: concurrent guesses can never check more than `maxAttempts`.
   */
  claimAttempt(id: string, kind: string, maxAttempts: number, now: Date): Promise<AuthFlowRecord | undefined>;
  delete(id: string): Promise<void>;
  /** Deletes every pending flow of a user (e.g. MFA challenges begun with a password that just changed); returns how many. */
  deleteForUser(userId: string): Promise<number>;
}

/**
 * Every store the auth service uses, plus a way to run several writes atomically.
 *
 * @example
 * const stores = createKyselyAuthStores(db);
 * await stores.transaction(async (tx) => { await tx.users.create(...); await tx.teams.create(...); });
 */
export interface AuthStores {
  users: UserStore;
  teams: TeamStore;
  refreshTokens: RefreshTokenStore;
  apiKeys: ApiKeyStore;
  mfa: MfaStore;
  oauthAccounts: OAuthAccountStore;
  loginAttempts: LoginAttemptStore;
  flows: AuthFlowStore;
  counters: CounterStore;
  transaction<T>(work: (stores: AuthStores) => Promise<T>): Promise<T>;
}

/** Raised by a team store when a change would leave a team with no owner. */
export class LastOwnerError extends GatewayError {
  constructor(readonly teamId: string) {
    super("last_owner", `Team ${teamId} must keep at least one owner`, { details: { teamId } });
    this.name = "LastOwnerError";
  }
}

/** Raised by a store when a unique value (an email, a credential id) already exists. */
export class DuplicateError extends GatewayError {
  constructor(message: string) {
    super("duplicate", message);
    this.name = "DuplicateError";
  }
}
