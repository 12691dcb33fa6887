import type Stripe from "stripe";
import * as z from "zod";
import { requireOptional } from "../optional-dependency.js";
import { parseOptions } from "../options.js";

export const StripeClientOptions = z.object({
  /** Secret API key, `sk_live_...` or `sk_test_...`. */
  apiKey: z.string().min(1),
  /** API host; point it at a local fake in tests. Default Stripe's. */
  host: z.string().min(1).optional(),
  port: z.union([z.number().int().positive(), z.string().regex(/^\d+$/)]).optional(),
  protocol: z.enum(["http", "https"]).optional(),
  /** Retries of failed requests (the SDK adds idempotency keys to them). Default 2. */
  maxNetworkRetries: z.number().int().min(0).max(10).optional(),
  /** Request timeout in milliseconds. Default 30 s. */
  timeoutMs: z.number().int().positive().optional(),
});
export type StripeClientOptions = z.input<typeof StripeClientOptions>;

const modes = new WeakMap<Stripe, boolean>();

/**
 * Whether a client from `createStripeClient` uses a live key (`sk_live_…`, `rk_live_…`); undefined
 * for clients made elsewhere. The webhook compares it with each event's `livemode`.
 *
 * @example
 * stripeLivemodeOf(createStripeClient({ apiKey: "sk_test_x" })); // false
 */
export function stripeLivemodeOf(client: Stripe): boolean | undefined {
  return modes.get(client);
}

/**
 * A Stripe SDK client with a configurable endpoint, so the same code talks to Stripe in
 * production and to a local fake in tests.
 *
 * @example
 * const stripe = createStripeClient({ apiKey: process.env.STRIPE_SECRET_KEY! });
 * const local = createStripeClient({ apiKey: "sk_test_x", host: "127.0.0.1", port: 12111, protocol: "http" });
 */
export function createStripeClient(options: StripeClientOptions): Stripe {
  const o = parseOptions(StripeClientOptions, options, "Stripe client");
  const StripeSdk = requireOptional<typeof import("stripe")>("stripe").default;
  const client = new StripeSdk(o.apiKey, {
    maxNetworkRetries: o.maxNetworkRetries ?? 2,
    timeout: o.timeoutMs ?? 30_000,
    telemetry: false,
    ...(o.host !== undefined ? { host: o.host } : {}),
    ...(o.port !== undefined ? { port: o.port } : {}),
    ...(o.protocol !== undefined ? { protocol: o.protocol } : {}),
  });
  modes.set(client, /^(sk|rk)_live_/.test(o.apiKey));
  return client;
}
