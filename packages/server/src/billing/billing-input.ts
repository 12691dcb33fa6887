import * as z from "zod";

/** `POST /v1/billing/checkout`: which pack, for which team (default the caller's current one). */
export const CheckoutBody = z
  .object({
    packId: z.string().regex(/^[a-z0-9_-]{1,64}$/),
    teamId: z.string().min(1).max(100).optional(),
    /** Makes a retried request return the same Checkout Session. */
    idempotencyKey: z.string().min(8).max(200).optional(),
  })
  .strict();
