import * as z from "zod";
import { ReauthPassword } from "../http/reauth.js";

/**
 * `DELETE /v1/me`: the caller's password, checked by `requireReauthentication` like every other
 * step-up route (its brute-force limiter applies; missing or empty is 401
 * `reauthentication_required`). An account without a password (OAuth only) confirms by having
 * signed in within the last 10 minutes instead.
 */
export const EraseAccountBody = z.object({ password: ReauthPassword }).strict();
