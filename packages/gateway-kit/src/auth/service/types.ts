import * as z from "zod";
import type { Permission, Role } from "../permissions.js";
import * as webauthn from "../webauthn.js";

/**
 * Where a request came from, for sessions, limits and the audit log: one value a route builds
 * once and hands to every operation.
 *
 * @example
 * const meta: RequestMeta = { ip: requestIp(ctx), userAgent: ctx.get("user-agent"), requestId: ctx.state.requestId };
 * await auth.login({ email, password }, meta);
 */
export interface RequestMeta {
  ip?: string | undefined;
  userAgent?: string | undefined;
  requestId?: string | undefined;
}

/**
 * What a signed-in caller gives to prove, again, that they are the account's owner before an
 * operation that changes how the account signs in. A stolen access token alone is never enough.
 *
 * @example
 * await auth.enrolTotp(principal, "Phone", { password: body.password }, meta);
 */
export interface Reauthentication {
  /** The account's password; required for accounts that have one. */
  password?: string | undefined;
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

/** A login session as its user sees it. */
export interface SessionView {
  id: string;
  teamId: string | null;
  createdAt: string;
  lastSeenAt: string;
  expiresAt: string;
  userAgent: string | null;
  ip: string | null;
  current: boolean;
}

/** A team the user belongs to, with the permissions of their role there. */
export interface MembershipView {
  teamId: string;
  name: string;
  personal: boolean;
  role: Role;
  permissions: Permission[];
}

/** The user's second factors (never their secrets) and how many recovery codes are left. */
export interface FactorList {
  factors: Array<{ id: string; kind: string; label: string | null; confirmed: boolean; createdAt: string }>;
  recoveryCodesLeft: number;
}
