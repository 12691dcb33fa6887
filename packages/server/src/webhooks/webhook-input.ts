import * as z from "zod";
import { ReauthPassword } from "../http/reauth.js";

/** Run events a webhook can subscribe to: one per way a run ends. */
export const WEBHOOK_EVENTS = ["run.completed", "run.failed", "run.cancelled", "run.interrupted"] as const;
export type WebhookEvent = (typeof WEBHOOK_EVENTS)[number];

export const CreateWebhookBody = z
  .object({
    url: z.string().min(1).max(2048),
    events: z
      .array(z.enum(WEBHOOK_EVENTS))
      .min(1)
      .max(WEBHOOK_EVENTS.length * 2)
      .transform((events) => [...new Set(events)]),
    /** Re-authentication (see http/reauth.ts); checked by the route, never stored. */
    password: ReauthPassword,
  })
  .strict();
export type CreateWebhookBody = z.output<typeof CreateWebhookBody>;

export const ListDeliveriesQuery = z
  .object({
    limit: z.coerce.number().int().min(1).max(200).default(50),
  })
  .strict();
export type ListDeliveriesQuery = z.output<typeof ListDeliveriesQuery>;
