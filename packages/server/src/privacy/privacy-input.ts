import { z } from "zod";

/**
 * `DELETE /v1/me`: the caller's password, checked through gateway-kit's login (its brute-force
 * limiter applies). An account without a password (OAuth only) confirms by having signed in
 * within the last 10 minutes instead.
 */
export const EraseAccountBody = z.object({ password: z.string().min(1).max(256).optional() }).strict();
