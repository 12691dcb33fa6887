import type { Middleware } from "koa";
import { sql, type Kysely, type Transaction } from "kysely";
import type Stripe from "stripe";
import { z } from "zod";
import { createKyselyLedger } from "../credits/kysely-ledger.js";
import { retryTransaction } from "../credits/retry-transaction.js";
import { HttpError } from "../http-error.js";
import { CHECKOUT_METADATA } from "./checkout.js";
import type { BillingTables } from "./migrations.js";

export type WebhookOutcome = "granted" | "pending" | "failed" | "expired" | "ignored";

export interface ProcessedEvent {
  eventId: string;
  type: string;
  outcome: WebhookOutcome;
  /** True when the event id was seen before and nothing was done. */
  duplicate: boolean;
  /** Set when credits were granted (or had already been granted for this session). */
  grant?: { accountId: string; credits: number; transactionId: string };
}

export const StripeWebhookOptions = z.object({
  stripe: z.custom<Stripe>((value) => typeof value === "object" && value !== null && "webhooks" in value, "a Stripe client"),
  db: z.custom<Kysely<any>>((value) => typeof value === "object" && value !== null, "a Kysely instance"),
  /** The endpoint's signing secret(s), `whsec_...`. Several while rotating. */
  signingSecret: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
  /** Largest accepted age of the signature timestamp, in seconds. Default 300. */
  toleranceSeconds: z.number().int().positive().max(3600).optional(),
  /** Largest accepted body. Default 1 MiB. */
  maxBodyBytes: z.number().int().positive().optional(),
  /** Called after an event committed, e.g. to log or notify. Errors are ignored. */
  onProcessed: z.custom<(event: ProcessedEvent) => void>((value) => typeof value === "function").optional(),
});
export type StripeWebhookOptions = z.input<typeof StripeWebhookOptions>;

async function readRawBody(ctx: Parameters<Middleware>[0], limit: number): Promise<Buffer> {
  const req = ctx.req;
  if (req.readableEnded || (req as { _consumed?: boolean })._consumed) {
    // A body parser ran first; it keeps the text it read.
    const raw = (ctx.request as { rawBody?: unknown }).rawBody;
    if (typeof raw !== "string") throw new Error("stripeWebhook needs the raw body: mount it before any body parser");
    return Buffer.from(raw, "utf8");
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new HttpError(413, "payload_too_large", `Webhook body is over ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/**
 * The Stripe webhook endpoint. It verifies `Stripe-Signature` over the raw body with the SDK
 * (timestamp tolerance, any matching `v1`), records the event id and grants purchased credits
 * in one database transaction, so a replayed or re-ordered delivery grants once. Grants are keyed
 * by checkout session, so `checkout.session.completed` and `checkout.session.async_payment_succeeded`
 * for the same session also grant once. Mount it on its own route, before any body parser.
 *
 * Responds 200 `{ received: true }` once processed (or already processed), 400 on a bad signature
 * or body, and 500 when processing failed (nothing is recorded, so Stripe's retry runs it again).
 *
 * @example
 * router.post("/billing/stripe/webhook", stripeWebhook({ stripe, db, signingSecret: process.env.STRIPE_WEBHOOK_SECRET! }));
 */
export function stripeWebhook(options: StripeWebhookOptions): Middleware {
  const parsed = StripeWebhookOptions.safeParse(options);
  if (!parsed.success) throw new TypeError(`Invalid stripeWebhook options: ${parsed.error.message}`);
  const { stripe, db, toleranceSeconds = 300, maxBodyBytes = 1024 * 1024, onProcessed } = parsed.data;
  const secrets = Array.isArray(parsed.data.signingSecret) ? parsed.data.signingSecret : [parsed.data.signingSecret];

  return async (ctx) => {
    if (ctx.method !== "POST") throw new HttpError(405, "method_not_allowed", "Use POST", undefined, { Allow: "POST" });
    const signature = ctx.get("stripe-signature");
    if (!signature) throw new HttpError(400, "missing_signature", "Stripe-Signature header is missing");
    const body = await readRawBody(ctx, maxBodyBytes);
    let event: Stripe.Event | undefined;
    let failure: unknown;
    for (const secret of secrets) {
      try {
        event = await stripe.webhooks.constructEventAsync(body, signature, secret, toleranceSeconds);
        break;
      } catch (error) {
        failure = error;
      }
    }
    if (!event) {
      const message = failure instanceof Error ? failure.message : "signature verification failed";
      throw new HttpError(400, "invalid_signature", `Stripe signature rejected: ${message}`);
    }
    const processed = await processStripeEvent(db, event);
    try {
      onProcessed?.(processed);
    } catch {
      // Observers must not turn a committed event into a retry.
    }
    ctx.status = 200;
    ctx.body = { received: true, duplicate: processed.duplicate, outcome: processed.outcome };
  };
}

/**
 * Applies one verified Stripe event: records its id and, for a paid checkout session, grants the
 * credits named in its metadata, in one transaction (retried on serialization failures). Exposed
 * for hosts that receive events another way (e.g. a queue).
 *
 * @example
 * const result = await processStripeEvent(db, await stripe.webhooks.constructEventAsync(raw, sig, secret));
 */
export async function processStripeEvent(db: Kysely<any>, event: Stripe.Event): Promise<ProcessedEvent> {
  return retryTransaction(db as Kysely<BillingTables>, (trx) => applyEvent(trx, event), 10);
}

async function applyEvent(trx: Transaction<BillingTables>, event: Stripe.Event): Promise<ProcessedEvent> {
  const claimed = await trx
    .insertInto("stripe_events")
    .values({ id: event.id, type: event.type, stripe_created_at: new Date(event.created * 1000), outcome: "ignored" })
    .onConflict((oc) => oc.column("id").doNothing())
    .returning("id")
    .executeTakeFirst();
  if (!claimed) {
    const prior = await trx.selectFrom("stripe_events").select("outcome").where("id", "=", event.id).executeTakeFirstOrThrow();
    return { eventId: event.id, type: event.type, outcome: prior.outcome as WebhookOutcome, duplicate: true };
  }
  const result: ProcessedEvent = { eventId: event.id, type: event.type, outcome: "ignored", duplicate: false };
  switch (event.type) {
    case "checkout.session.completed":
    case "checkout.session.async_payment_succeeded": {
      const session = event.data.object;
      const paid = session.payment_status === "paid" || session.payment_status === "no_payment_required";
      if (!session.metadata?.[CHECKOUT_METADATA.account]) {
        // A session some other integration on the same Stripe account created: not ours to grant.
        break;
      }
      if (paid) {
        result.grant = await grantSession(trx, session);
        result.outcome = "granted";
      } else {
        await setStatus(trx, session.id, "pending");
        result.outcome = "pending";
      }
      break;
    }
    case "checkout.session.async_payment_failed":
      await setStatus(trx, event.data.object.id, "failed");
      result.outcome = "failed";
      break;
    case "checkout.session.expired":
      await setStatus(trx, event.data.object.id, "expired");
      result.outcome = "expired";
      break;
    default:
      break;
  }
  if (result.outcome !== "ignored") await trx.updateTable("stripe_events").set({ outcome: result.outcome }).where("id", "=", event.id).execute();
  return result;
}

/** Moves a session forward only: a late `expired` or `pending` never overrides `paid`. */
async function setStatus(trx: Transaction<BillingTables>, sessionId: string, status: "pending" | "failed" | "expired") {
  await trx
    .updateTable("billing_checkouts")
    .set({ status, ...(status === "pending" ? {} : { completed_at: sql<Date>`now()` }) })
    .where("session_id", "=", sessionId)
    .where("status", "in", status === "pending" ? ["open"] : ["open", "pending"])
    .execute();
}

async function grantSession(trx: Transaction<BillingTables>, session: Stripe.Checkout.Session) {
  const metadata = session.metadata ?? {};
  const accountId = metadata[CHECKOUT_METADATA.account];
  const credits = Number(metadata[CHECKOUT_METADATA.credits]);
  if (!accountId || !Number.isSafeInteger(credits) || credits <= 0) {
    throw new HttpError(400, "invalid_checkout_metadata", `Checkout session ${session.id} has no usable credit metadata`);
  }
  const recorded = await trx.selectFrom("billing_checkouts").select(["account_id", "credits"]).where("session_id", "=", session.id).executeTakeFirst();
  if (recorded && (recorded.account_id !== accountId || Number(recorded.credits) !== credits)) {
    throw new HttpError(400, "checkout_mismatch", `Checkout session ${session.id} does not match the session this app created`);
  }
  const ledger = createKyselyLedger(trx);
  const grant = await ledger.purchase({ account: accountId, amount: credits, idempotencyKey: `stripe:checkout:${session.id}` });
  await trx
    .updateTable("billing_checkouts")
    .set({ status: "paid", grant_transaction_id: grant.transactionId, completed_at: sql<Date>`now()` })
    .where("session_id", "=", session.id)
    .execute();
  return { accountId, credits, transactionId: grant.transactionId };
}
