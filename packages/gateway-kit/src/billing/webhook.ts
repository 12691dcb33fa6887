import type { Middleware } from "koa";
import { sql, type Kysely, type Transaction } from "kysely";
import type Stripe from "stripe";
import * as z from "zod";
import { retryTransaction } from "../db/index.js";
import { HttpError } from "../http-error.js";
import { CHECKOUT_METADATA } from "./checkout.js";
import type { BillingTables } from "./migrations.js";
import { stripeLivemodeOf } from "./stripe-client.js";
import { ConfigError } from "../errors.js";
import { functionOption, parseOptions } from "../options.js";
import type { BillingLedger, BillingLedgerFactory } from "./ledger.js";

/**
 * What the webhook did with an event: `granted` credits for a paid checkout, moved a checkout to
 * `pending`/`failed`/`expired`, `reversed` credits after a refund or dispute (or `reinstated`
 * them when a dispute was won), `refused` a signed event that does not match what this app
 * recorded (unknown checkout, other amount or currency, other mode, another Stripe account), or
 * `ignored` one it has no use for.
 */
export type WebhookOutcome = "granted" | "pending" | "failed" | "expired" | "reversed" | "reinstated" | "refused" | "ignored";

export interface ProcessedEvent {
  eventId: string;
  type: string;
  outcome: WebhookOutcome;
  /** True when the event id was seen before and nothing was done. */
  duplicate: boolean;
  /** Set when credits were granted (or had already been granted for this session). */
  grant?: { accountId: string; credits: number; transactionId: string };
  /** Set when credits were taken back or given back: the change this event made, in micro-credits. */
  adjustment?: { accountId: string; sessionId: string; credits: number; reversedTotal: number; debt: number };
  /** Why an event was refused. */
  reason?: string;
}

export const StripeWebhookOptions = z.object({
  stripe: z.custom<Stripe>((value) => typeof value === "object" && value !== null && "webhooks" in value, "a Stripe client"),
  db: z.custom<Kysely<any>>((value) => typeof value === "object" && value !== null, "a Kysely instance"),
  /** The credits ledger purchases are granted in, on the event's transaction, e.g. `createKyselyLedger`. */
  ledger: functionOption<BillingLedgerFactory>(),
  /** The endpoint's signing secret(s), `whsec_...`. Several while rotating. */
  signingSecret: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
  /** Largest accepted age of the signature timestamp, in seconds. Default 300. */
  toleranceSeconds: z.number().int().positive().max(3600).optional(),
  /** Largest accepted body. Default 1 MiB. */
  maxBodyBytes: z.number().int().positive().optional(),
  /**
   * Whether the configured key is a live one; events whose `livemode` differs are refused.
   * Default: read from a client made by `createStripeClient`; required for other clients.
   */
  livemode: z.boolean().optional(),
  /** Called after an event committed, e.g. to log or notify. Errors are ignored. */
  onProcessed: z.custom<(event: ProcessedEvent) => void>((value) => typeof value === "function").optional(),
});
export type StripeWebhookOptions = z.input<typeof StripeWebhookOptions>;

async function readRawBody(ctx: Parameters<Middleware>[0], limit: number): Promise<Buffer> {
  const req = ctx.req;
  if (req.readableEnded || (req as { _consumed?: boolean })._consumed) {
    // A body parser ran first; it keeps the text it read.
    const raw = (ctx.request as { rawBody?: unknown }).rawBody;
    if (typeof raw !== "string") throw new ConfigError("stripeWebhook needs the raw body: mount it before any body parser");
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
 * router.post("/billing/stripe/webhook", stripeWebhook({ stripe, db, ledger: createKyselyLedger, signingSecret: process.env.STRIPE_WEBHOOK_SECRET! }));
 */
export function stripeWebhook(options: StripeWebhookOptions): Middleware {
  const o = parseOptions(StripeWebhookOptions, options, "stripeWebhook");
  const { stripe, db, ledger, toleranceSeconds = 300, maxBodyBytes = 1024 * 1024, onProcessed } = o;
  const livemode = o.livemode ?? stripeLivemodeOf(stripe);
  if (livemode === undefined) throw new ConfigError("Invalid stripeWebhook options: pass livemode (true for a live key) for a Stripe client not made by createStripeClient");
  const secrets = Array.isArray(o.signingSecret) ? o.signingSecret : [o.signingSecret];

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
    const processed = await processStripeEvent(db, event, { ledger, livemode });
    try {
      onProcessed?.(processed);
    } catch {
      // Observers must not turn a committed event into a retry.
    }
    ctx.status = 200;
    ctx.body = { received: true, duplicate: processed.duplicate, outcome: processed.outcome };
  };
}

export interface ProcessStripeEventOptions {
  /** The credits ledger on the event's transaction, e.g. `createKyselyLedger`. */
  ledger: BillingLedgerFactory;
  /** The mode of the configured key; an event of the other mode is refused. Unchecked when omitted. */
  livemode?: boolean;
}

/**
 * Applies one verified Stripe event: records its id and, in the same transaction (retried on
 * serialization failures), grants the credits of a paid checkout this app recorded, or takes
 * them back after a refund or dispute. Exposed for hosts that receive events another way (e.g. a
 * queue).
 *
 * Credits are granted only for a checkout session `createCreditCheckout` recorded, with the
 * credits and wallet of that record (the event's metadata must agree, and so must its amount,
 * currency and mode). Refunds (`charge.refunded`, `refund.created`) and disputes
 * (`charge.dispute.created`, `charge.dispute.funds_withdrawn`) take back the matching share of
 * the checkout's credits with a ledger reversal, once per refund or dispute however many events
 * describe it; `charge.dispute.funds_reinstated` (a won dispute) gives it back.
 *
 * @example
 * const result = await processStripeEvent(db, await stripe.webhooks.constructEventAsync(raw, sig, secret), { ledger: createKyselyLedger, livemode: false });
 */
export async function processStripeEvent(db: Kysely<any>, event: Stripe.Event, options: ProcessStripeEventOptions): Promise<ProcessedEvent> {
  if (typeof options?.ledger !== "function") throw new ConfigError("processStripeEvent needs options.ledger, e.g. createKyselyLedger");
  return retryTransaction(db as Kysely<BillingTables>, (trx) => applyEvent(trx, event, options), 10);
}

type Trx = Transaction<BillingTables>;
type CheckoutRow = {
  session_id: string;
  account_id: string;
  credits: string | number | bigint;
  amount_total: string | number | bigint;
  currency: string;
  status: string;
  grant_transaction_id: string | null;
  payment_intent_id: string | null;
  refunded_cents: string | number | bigint;
  reversed_credits: string | number | bigint;
  adjustments: number;
};

const idOf = (value: unknown): string | null =>
  typeof value === "string" ? value : value && typeof value === "object" && typeof (value as { id?: unknown }).id === "string" ? (value as { id: string }).id : null;

class Refusal extends Error {}

async function applyEvent(trx: Trx, event: Stripe.Event, options: ProcessStripeEventOptions): Promise<ProcessedEvent> {
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
  try {
    if (options.livemode !== undefined && event.livemode !== options.livemode) {
      throw new Refusal(`a ${event.livemode ? "live" : "test"}-mode event for a ${options.livemode ? "live" : "test"}-mode key`);
    }
    // Checkouts are created on this app's own Stripe account; a Connect event is about someone else's.
    if ((event as { account?: unknown }).account) throw new Refusal("an event of a connected account");
    await dispatch(trx, options.ledger(trx), event, result);
  } catch (error) {
    if (!(error instanceof Refusal)) throw error;
    result.outcome = "refused";
    result.reason = error.message;
    delete result.grant;
    delete result.adjustment;
  }
  if (result.outcome !== "ignored") await trx.updateTable("stripe_events").set({ outcome: result.outcome }).where("id", "=", event.id).execute();
  return result;
}

async function dispatch(trx: Trx, ledger: BillingLedger, event: Stripe.Event, result: ProcessedEvent): Promise<void> {
  switch (event.type) {
    case "checkout.session.completed":
    case "checkout.session.async_payment_succeeded": {
      const session = event.data.object;
      if (!session.metadata?.[CHECKOUT_METADATA.account]) return; // another integration's session: not ours
      const checkout = await recordedCheckout(trx, session);
      const paid = session.payment_status === "paid" || session.payment_status === "no_payment_required";
      if (paid) {
        result.grant = await grantCheckout(trx, ledger, checkout, session);
        result.outcome = "granted";
        const adjustment = await reconcile(trx, ledger, checkout.session_id);
        if (adjustment) result.adjustment = adjustment;
      } else {
        await setStatus(trx, session.id, "pending");
        result.outcome = "pending";
      }
      return;
    }
    case "checkout.session.async_payment_failed":
      await setStatus(trx, event.data.object.id, "failed");
      result.outcome = "failed";
      return;
    case "checkout.session.expired":
      await setStatus(trx, event.data.object.id, "expired");
      result.outcome = "expired";
      return;
    case "charge.refunded": {
      const charge = event.data.object;
      const paymentIntentId = idOf(charge.payment_intent);
      const checkout = await checkoutOfPayment(trx, paymentIntentId, charge.currency);
      if (!checkout) {
        if (paymentIntentId) {
          await trx
            .insertInto("billing_early_refunds")
            .values({ payment_intent_id: paymentIntentId, currency: charge.currency, refunded_cents: charge.amount_refunded })
            .onConflict((oc) => oc.column("payment_intent_id").doUpdateSet({ refunded_cents: sql`greatest(billing_early_refunds.refunded_cents, excluded.refunded_cents)` }))
            .execute();
        }
        return;
      }
      // amount_refunded is cumulative: keep the largest seen, so an old snapshot changes nothing.
      await trx
        .updateTable("billing_checkouts")
        .set({ refunded_cents: sql`greatest(refunded_cents, ${charge.amount_refunded})` })
        .where("session_id", "=", checkout.session_id)
        .execute();
      return finish(trx, ledger, checkout.session_id, result);
    }
    case "refund.created":
    case "refund.updated": {
      const refund = event.data.object;
      const paymentIntentId = idOf(refund.payment_intent);
      const checkout = await checkoutOfPayment(trx, paymentIntentId, refund.currency);
      if (!checkout && !paymentIntentId) return;
      // A refund that failed or was cancelled gave nothing back, and stays so: both states are
      // final, so a "pending" snapshot delivered after them is an old one.
      const voided = refund.status === "failed" || refund.status === "canceled";
      await trx
        .insertInto("billing_reversals")
        .values({
          id: refund.id,
          ...owner(checkout, paymentIntentId, refund.currency),
          kind: "refund",
          amount_cents: voided ? 0 : refund.amount,
          voided_at: voided ? sql<Date>`now()` : null,
        })
        .onConflict((oc) =>
          oc.column("id").doUpdateSet({
            amount_cents: sql`case when billing_reversals.voided_at is null and excluded.voided_at is null then excluded.amount_cents else 0 end`,
            voided_at: sql<Date>`coalesce(billing_reversals.voided_at, excluded.voided_at)`,
          }),
        )
        .execute();
      if (checkout) await finish(trx, ledger, checkout.session_id, result);
      return;
    }
    case "charge.dispute.created":
    case "charge.dispute.funds_withdrawn": {
      const dispute = event.data.object;
      const paymentIntentId = idOf(dispute.payment_intent);
      const checkout = await checkoutOfPayment(trx, paymentIntentId, dispute.currency);
      if (!checkout && !paymentIntentId) return;
      await trx
        .insertInto("billing_reversals")
        .values({ id: dispute.id, ...owner(checkout, paymentIntentId, dispute.currency), kind: "dispute", amount_cents: dispute.amount })
        .onConflict((oc) => oc.column("id").doNothing())
        .execute();
      if (checkout) await finish(trx, ledger, checkout.session_id, result);
      return;
    }
    case "charge.dispute.funds_reinstated": {
      const dispute = event.data.object;
      const paymentIntentId = idOf(dispute.payment_intent);
      const checkout = await checkoutOfPayment(trx, paymentIntentId, dispute.currency);
      if (!checkout && !paymentIntentId) return;
      await trx
        .insertInto("billing_reversals")
        .values({ id: dispute.id, ...owner(checkout, paymentIntentId, dispute.currency), kind: "dispute", amount_cents: dispute.amount, reinstated_at: sql<Date>`now()` })
        .onConflict((oc) => oc.column("id").doUpdateSet({ reinstated_at: sql<Date>`coalesce(billing_reversals.reinstated_at, now())` }))
        .execute();
      if (checkout) await finish(trx, ledger, checkout.session_id, result);
      return;
    }
    default:
      return;
  }
}

async function finish(trx: Trx, ledger: BillingLedger, sessionId: string, result: ProcessedEvent): Promise<void> {
  const adjustment = await reconcile(trx, ledger, sessionId);
  if (!adjustment) return;
  result.adjustment = adjustment;
  result.outcome = adjustment.credits < 0 ? "reinstated" : "reversed";
}

/** The checkout this app recorded for a session, locked; refuses a session it never created or one whose details differ. */
async function recordedCheckout(trx: Trx, session: Stripe.Checkout.Session): Promise<CheckoutRow> {
  const row = (await trx.selectFrom("billing_checkouts").selectAll().where("session_id", "=", session.id).forUpdate().executeTakeFirst()) as CheckoutRow | undefined;
  if (!row) throw new Refusal(`checkout session ${session.id} was not created by this app`);
  const metadata = session.metadata ?? {};
  if (metadata[CHECKOUT_METADATA.account] !== row.account_id || metadata[CHECKOUT_METADATA.credits] !== String(row.credits)) {
    throw new Refusal(`checkout session ${session.id} names another wallet or amount of credits than the one this app created`);
  }
  if (session.amount_total != null && Number(session.amount_total) !== Number(row.amount_total)) {
    throw new Refusal(`checkout session ${session.id} was paid ${session.amount_total}, not the recorded ${String(row.amount_total)}`);
  }
  if (session.currency != null && session.currency.toLowerCase() !== row.currency.toLowerCase()) {
    throw new Refusal(`checkout session ${session.id} was paid in ${session.currency}, not the recorded ${row.currency}`);
  }
  return row;
}

/**
 * Serialises everything about one payment: a refund or dispute looking for its checkout and the
 * grant that names the checkout's payment, so an early refund is either seen by the grant or
 * finds the checkout it belongs to, never neither.
 */
async function lockPayment(trx: Trx, paymentIntentId: string): Promise<void> {
  await sql`select pg_advisory_xact_lock(hashtextextended(${`gk_billing_payment:${paymentIntentId}`}, 0))`.execute(trx);
}

/**
 * Who a refund or dispute row belongs to: its checkout, or, when it arrived before the checkout's
 * completion named the payment, the payment itself until the grant claims it.
 */
const owner = (checkout: CheckoutRow | null, paymentIntentId: string | null, currency: string) =>
  checkout ? { session_id: checkout.session_id } : { session_id: null, payment_intent_id: paymentIntentId, currency };

/** The recorded checkout a refund or dispute is about, by its payment; null when none matches. */
async function checkoutOfPayment(trx: Trx, paymentIntentId: string | null, currency: string | null | undefined): Promise<CheckoutRow | null> {
  if (!paymentIntentId) return null;
  await lockPayment(trx, paymentIntentId);
  const row = (await trx.selectFrom("billing_checkouts").selectAll().where("payment_intent_id", "=", paymentIntentId).forUpdate().executeTakeFirst()) as
    | CheckoutRow
    | undefined;
  if (!row) return null;
  if (currency && currency.toLowerCase() !== row.currency.toLowerCase()) throw new Refusal(`a ${currency} refund or dispute for a ${row.currency} checkout`);
  return row;
}

/** Moves a session forward only: a late `expired` or `pending` never overrides `paid`. */
async function setStatus(trx: Trx, sessionId: string, status: "pending" | "failed" | "expired") {
  await trx
    .updateTable("billing_checkouts")
    .set({ status, ...(status === "pending" ? {} : { completed_at: sql<Date>`now()` }) })
    .where("session_id", "=", sessionId)
    .where("status", "in", status === "pending" ? ["open"] : ["open", "pending"])
    .execute();
}

async function grantCheckout(trx: Trx, ledger: BillingLedger, checkout: CheckoutRow, session: Stripe.Checkout.Session) {
  const credits = Number(checkout.credits);
  const grant = await ledger.purchase({ account: checkout.account_id, amount: credits, idempotencyKey: `stripe:checkout:${session.id}` });
  const paymentIntentId = idOf(session.payment_intent);
  if (paymentIntentId) await lockPayment(trx, paymentIntentId);
  await trx
    .updateTable("billing_checkouts")
    .set({
      grant_transaction_id: grant.transactionId,
      completed_at: sql<Date>`coalesce(completed_at, now())`,
      ...(paymentIntentId ? { payment_intent_id: paymentIntentId } : {}),
    })
    .where("session_id", "=", session.id)
    .execute();
  if (paymentIntentId) await claimEarlyReversals(trx, checkout, paymentIntentId);
  await trx.updateTable("billing_checkouts").set({ status: "paid" }).where("session_id", "=", session.id).where("status", "in", ["open", "pending", "failed", "expired"]).execute();
  return { accountId: checkout.account_id, credits, transactionId: grant.transactionId };
}

/**
 * Attaches the refunds and disputes that arrived before the checkout's completion named its
 * payment (Stripe does not promise order, and retries a failed delivery for days); those in
 * another currency than the checkout stay unclaimed, as they would have been refused.
 */
async function claimEarlyReversals(trx: Trx, checkout: CheckoutRow, paymentIntentId: string): Promise<void> {
  await trx
    .updateTable("billing_reversals")
    .set({ session_id: checkout.session_id })
    .where("session_id", "is", null)
    .where("payment_intent_id", "=", paymentIntentId)
    .where(sql<boolean>`lower(currency) = lower(${checkout.currency})`)
    .execute();
  const early = await trx
    .deleteFrom("billing_early_refunds")
    .where("payment_intent_id", "=", paymentIntentId)
    .where(sql<boolean>`lower(currency) = lower(${checkout.currency})`)
    .returning("refunded_cents")
    .executeTakeFirst();
  if (early) {
    await trx
      .updateTable("billing_checkouts")
      .set({ refunded_cents: sql`greatest(refunded_cents, ${early.refunded_cents})` })
      .where("session_id", "=", checkout.session_id)
      .execute();
  }
}

/**
 * Brings the credits taken back from a checkout in line with what Stripe has refunded or holds
 * in open disputes: the checkout's credits times the share of its amount, rounded up. A rise is
 * reversed in the ledger, a fall (a won dispute) given back; each adjustment has its own
 * idempotency key, numbered under the checkout's row lock. Nothing happens before the grant.
 */
async function reconcile(trx: Trx, ledger: BillingLedger, sessionId: string): Promise<ProcessedEvent["adjustment"]> {
  const row = (await trx.selectFrom("billing_checkouts").selectAll().where("session_id", "=", sessionId).forUpdate().executeTakeFirstOrThrow()) as CheckoutRow;
  if (!row.grant_transaction_id) return undefined;
  const sums = await trx
    .selectFrom("billing_reversals")
    .select([
      sql<string>`coalesce(sum(amount_cents) filter (where kind = 'refund'), 0)::text`.as("refunds"),
      sql<string>`coalesce(sum(amount_cents) filter (where kind = 'dispute' and reinstated_at is null), 0)::text`.as("disputes"),
    ])
    .where("session_id", "=", sessionId)
    .executeTakeFirstOrThrow();
  const total = BigInt(row.amount_total);
  const credits = BigInt(row.credits);
  // Refunds arrive both as refund objects and as a charge's cumulative total: the larger of the two
  // counts each refund once.
  const refunded = BigInt(sums.refunds) > BigInt(row.refunded_cents) ? BigInt(sums.refunds) : BigInt(row.refunded_cents);
  const disputed = BigInt(sums.disputes);
  let cents = refunded + disputed;
  if (cents > total) cents = total;
  const target = total === 0n ? 0n : (credits * cents + total - 1n) / total;
  const delta = Number(target - BigInt(row.reversed_credits));
  const status = cents >= total && total > 0n ? "refunded" : disputed > 0n ? "disputed" : "paid";
  if (delta === 0) {
    if (row.status !== status) await trx.updateTable("billing_checkouts").set({ status }).where("session_id", "=", sessionId).execute();
    return undefined;
  }
  const key = `stripe:adjust:${sessionId}:${row.adjustments + 1}`;
  let debt = 0;
  if (delta > 0) {
    const reversal = await ledger.reverse({ account: row.account_id, amount: delta, idempotencyKey: key, reason: disputed > 0n && refunded === 0n ? "dispute" : "refund" });
    debt = reversal.debt;
  } else {
    await ledger.purchase({ account: row.account_id, amount: -delta, idempotencyKey: key });
  }
  await trx
    .updateTable("billing_checkouts")
    .set({ reversed_credits: Number(target), adjustments: row.adjustments + 1, status })
    .where("session_id", "=", sessionId)
    .execute();
  return { accountId: row.account_id, sessionId, credits: delta, reversedTotal: Number(target), debt };
}
