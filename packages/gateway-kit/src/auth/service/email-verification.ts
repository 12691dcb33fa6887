import { AuthError } from "../../errors.js";
import type { Principal } from "../../principal.js";
import type { AuthContext } from "./context.js";
import { normaliseEmail } from "../password.js";
import { randomToken, sha256Hex } from "../secrets.js";
import type { RequestMeta } from "./types.js";

/** What asking for a verification email did. */
export interface EmailVerificationRequest {
  email: string;
  /** False when the address is verified already (then nothing is sent). */
  sent: boolean;
  emailVerified: boolean;
  /** When the token just sent stops working. */
  expiresAt?: string;
}

/** The account after a confirmed token. */
export interface EmailVerificationResult {
  userId: string;
  email: string;
  emailVerified: true;
  /** The token was used already, by this account, for this address: nothing changed. */
  alreadyVerified: boolean;
}

/**
 * Proving an email address: a single-use token sent to it, good for `ttlSeconds`, bound to the
 * account and to the exact address it was sent to.
 */
export interface EmailVerificationService {
  /**
   * Sends the signed-in user a verification token at their current address. Counted against
   * `emailVerification.limits` first (429 `verification_email_limit`); 404 `not_found` without
   * `emailVerification`; 502 `email_delivery_failed` when the mailer fails (the token is
   * withdrawn). Sends nothing when the address is verified already.
   *
   * @example
   * const { sent, expiresAt } = await auth.requestEmailVerification(principal, meta);
   */
  requestEmailVerification(principal: Principal, meta?: RequestMeta): Promise<EmailVerificationRequest>;
  /**
   * Confirms a token for the signed-in user: only the account it was sent for may use it, so a
   * victim who follows a link mailed by someone who signed up with their address verifies
   * nothing. Unknown or another account's token: 400 `invalid_verification_token`; past its
   * lifetime, or sent to an address the account no longer has: 410 `verification_token_expired`;
   * used: 410 `verification_token_used`, except for its own account while that address stays
   * verified, which gets the same answer again (`alreadyVerified: true`).
   *
   * @example
   * await auth.confirmEmailVerification(principal, body.token, meta); // { email, emailVerified: true, ... }
   */
  confirmEmailVerification(principal: Principal, token: string, meta?: RequestMeta): Promise<EmailVerificationResult>;
}

const KIND = "email_verification";
const TOKEN = /^evt_[A-Za-z0-9_-]{43}$/;
/**
 * A token's row outlives its lifetime by this much, so a late click hears "expired" rather than
 * "unknown"; the retention rule for `auth_flows` removes it after that.
 */
const KEEP_AFTER_EXPIRY_MS = 7 * 86_400_000;

interface TokenData {
  email: string;
  expiresAt: string;
}

export function createEmailVerificationService(context: AuthContext): EmailVerificationService {
  const { config, stores, now, audit, requireUser, claimCounts, windowStart } = context;

  function options() {
    if (!config.emailVerification) throw new AuthError("not_found", "Email verification is not enabled");
    return config.emailVerification;
  }

  function signedInUser(principal: Principal): void {
    // A leaked API key must not be able to prove an address on the account's behalf.
    if (principal.via !== "jwt") throw new AuthError("forbidden", "This needs a signed-in user, not an API key");
  }

  function message(token: string, expiresAt: Date, link: string | undefined): string {
    return [
      "Someone, hopefully you, asked to confirm that this address belongs to their keen account.",
      "",
      ...(link ? ["Confirm it here, signed in to that account:", link, "", "or give this token where you asked for it:"] : ["Give this token where you asked for it, signed in to that account:"]),
      `Verification token: ${token}`,
      "",
      `It works once, for that account only, until ${expiresAt.toISOString()}.`,
      "If you did not ask for this, ignore this message: nothing changes without the token.",
      "",
    ].join("\n");
  }

  return {
    async requestEmailVerification(principal: Principal, meta: RequestMeta = {}) {
      const settings = options();
      signedInUser(principal);
      const user = await requireUser(principal);
      const email = normaliseEmail(user.email);
      if (user.emailVerified) return { email, sent: false, emailVerified: true };
      const { limits } = settings;
      const refusedBy = await claimCounts([
        { key: "email_verification:all", limit: limits.global.limit, windowStart: windowStart(limits.global) },
        // Hashed: the counter table need not hold addresses.
        { key: `email_verification:address:${sha256Hex(email)}`, limit: limits.perAddress.limit, windowStart: windowStart(limits.perAddress) },
        { key: `email_verification:user:${user.id}`, limit: limits.perAccount.limit, windowStart: windowStart(limits.perAccount) },
      ]);
      if (refusedBy) {
        const scope = refusedBy.split(":")[1];
        const window = scope === "all" ? limits.global : scope === "address" ? limits.perAddress : limits.perAccount;
        const retryAfterSeconds = Math.max(1, Math.ceil((windowStart(window).getTime() + window.windowSeconds * 1000 - now().getTime()) / 1000));
        throw new AuthError("verification_email_limit", "Too many verification emails; try again later", { details: { scope }, retryAfterSeconds });
      }
      const token = `evt_${randomToken(32)}`;
      const at = now();
      const expiresAt = new Date(at.getTime() + settings.ttlSeconds * 1000);
      const id = sha256Hex(token);
      const data: TokenData = { email, expiresAt: expiresAt.toISOString() };
      // Only the hash is stored; the address is kept so a later change of address voids the token.
      await stores.flows.put({ id, kind: KIND, userId: user.id, data: { ...data }, attempts: 0, expiresAt: new Date(expiresAt.getTime() + KEEP_AFTER_EXPIRY_MS) }, at);
      try {
        await settings.mailer.send({ to: email, subject: settings.subject, text: message(token, expiresAt, settings.link?.(token)) });
      } catch (error) {
        await stores.flows.delete(id);
        throw new AuthError("email_delivery_failed", "The verification email could not be sent; try again later", { cause: error });
      }
      await audit(meta, { tenantId: principal.teamId ?? null, actorId: user.id, action: "auth.email_verification_request", target: `user:${user.id}`, result: "success" });
      return { email, sent: true, emailVerified: false, expiresAt: expiresAt.toISOString() };
    },

    async confirmEmailVerification(principal: Principal, token: string, meta: RequestMeta = {}) {
      options();
      signedInUser(principal);
      const invalid = () => new AuthError("invalid_verification_token", "The verification token is not valid for this account");
      if (!TOKEN.test(token)) throw invalid();
      const id = sha256Hex(token);
      const at = now();
      const flow = await stores.flows.peek(id, KIND, at);
      // Another account's token is as unknown as a made-up one.
      if (!flow || flow.userId !== principal.userId) throw invalid();
      const data = flow.data as Partial<TokenData>;
      const user = await requireUser(principal);
      const email = normaliseEmail(user.email);
      const denied = async (reason: string) =>
        audit(meta, { tenantId: principal.teamId ?? null, actorId: user.id, action: "auth.email_verify", target: `user:${user.id}`, result: "denied", details: { reason } });
      const result = (alreadyVerified: boolean): EmailVerificationResult => ({ userId: user.id, email, emailVerified: true, alreadyVerified });
      if (typeof data.email !== "string" || data.email !== email) {
        await denied("email_changed");
        throw new AuthError("verification_token_expired", "This token was sent to an address the account no longer has", { details: { reason: "email_changed" } });
      }
      if (flow.attempts > 0) {
        if (user.emailVerified) return result(true);
        await denied("used");
        throw new AuthError("verification_token_used", "This verification token was used already");
      }
      if (typeof data.expiresAt !== "string" || Date.parse(data.expiresAt) <= at.getTime()) {
        await denied("expired");
        throw new AuthError("verification_token_expired", "This verification token has expired; ask for a new one", { details: { reason: "expired" } });
      }
      // Spending the token and marking the address land together, and only for the address the
      // token was sent to: a change of address in between leaves both untouched.
      const outcome = await stores.transaction(async (tx) => {
        if (!(await tx.flows.claimAttempt(id, KIND, 1, at))) return "used" as const;
        if (!(await tx.users.markEmailVerified(user.id, email))) throw new AuthError("verification_token_expired", "This token was sent to an address the account no longer has", { details: { reason: "email_changed" } });
        return "verified" as const;
      });
      if (outcome === "used") {
        // A concurrent confirm of the same token won; for its own account that is the same answer.
        if ((await requireUser(principal)).emailVerified) return result(true);
        throw new AuthError("verification_token_used", "This verification token was used already");
      }
      await audit(meta, { tenantId: principal.teamId ?? null, actorId: user.id, action: "auth.email_verify", target: `user:${user.id}`, result: "success" });
      return result(false);
    },
  };
}
