import { requestIp, type AuthService } from "@keen/gateway-kit";
import type { ParameterizedContext } from "koa";
import * as z from "zod";
import { ServerError } from "../errors.js";

/**
 * The `password` field of a body whose act re-authenticates: optional in the schema (an account
 * without a password proves a recent sign-in instead), bounded, and never stored.
 */
export const ReauthPassword = z.string().max(256).optional();

/**
 * The gate of every act that hands out access outliving the caller's session (inviting into a
 * team, changing a member's role, registering a webhook): gateway-kit's re-authentication, the
 * same one API key creation runs. Only a user's own session qualifies, never an API key, and
 * a stolen access token alone is not enough. Throws `reauthentication_required` (401, with a
 * step-up challenge), `invalid_password` (403, counted by the login limiter),
 * `too_many_attempts` (429) or `forbidden` (403, for an API key).
 *
 * @example
 * await requireReauthentication(auth, ctx, body.password);
 */
export async function requireReauthentication(auth: AuthService, ctx: ParameterizedContext, password: string | undefined): Promise<void> {
  const principal = ctx.state.principal;
  if (!principal) throw new ServerError("forbidden", "Authentication required");
  await auth.reauthenticate(principal, { password }, { ip: requestIp(ctx), userAgent: ctx.get("user-agent") || undefined, requestId: ctx.state.requestId });
}
