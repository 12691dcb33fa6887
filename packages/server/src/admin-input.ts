import * as z from "zod";

/** `POST /v1/admin/credits/grant`: the idempotency key makes a repeated grant the same grant. */
export const GrantCreditsBody = z
  .object({
    teamId: z.uuid(),
    amount: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
    idempotencyKey: z.string().min(8).max(200),
  })
  .strict();
