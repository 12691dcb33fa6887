import { createHash } from "node:crypto";
import type { Kysely } from "kysely";
import type Stripe from "stripe";
import * as z from "zod";
import type { BillingTables } from "./migrations.js";
import { ConfigError, GatewayError } from "../errors.js";
import { functionOption, parseOptions } from "../options.js";
import type { BillingLedgerFactory } from "./ledger.js";

/** Metadata keys the checkout session carries back to the webhook. */
export const CHECKOUT_METADATA = {
  account: "keen_account_id",
  credits: "keen_credits",
  pack: "keen_pack_id",
  /** `user:<id>` or `team:<id>`. */
  owner: "keen_owner",
} as const;

export const CreditPack = z.object({
  /** Stable id the client asks for, e.g. `starter`. */
  id: z.string().regex(/^[a-z0-9_-]{1,64}$/),
  /** Label on the Stripe payment page. */
  name: z.string().min(1).max(200),
  /** Micro-credits granted when paid. */
  credits: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  /** Price in the currency's smallest unit (cents). */
  unitAmount: z.number().int().positive(),
  /** ISO currency code, lower case. */
  currency: z.string().regex(/^[a-z]{3}$/),
});
export type CreditPack = z.infer<typeof CreditPack>;

export const CreditCheckoutOptions = z.object({
  stripe: z.custom<Stripe>((value) => typeof value === "object" && value !== null && "checkout" in value, "a Stripe client"),
  db: z.custom<Kysely<any>>((value) => typeof value === "object" && value !== null, "a Kysely instance"),
  /** The credits ledger the wallets are opened in, e.g. `createKyselyLedger`. */
  ledger: functionOption<BillingLedgerFactory>(),
  packs: z.array(CreditPack).min(1),
  successUrl: z.url(),
  cancelUrl: z.url(),
});
export type CreditCheckoutOptions = z.input<typeof CreditCheckoutOptions>;

export interface StartCheckoutInput {
  /** The wallet owner; the wallet is opened if it does not exist yet. */
  owner: { userId: string } | { teamId: string };
  packId: string;
  /** An existing Stripe customer to attach the payment to. */
  customerId?: string;
  /**
   * Makes a retried request create one session. Scoped to the wallet and the pack before it is
   * sent to Stripe (whose keys are global to your account), so another buyer's or another pack's
   * use of the same key is another purchase.
   */
  idempotencyKey?: string;
}

export interface StartedCheckout {
  sessionId: string;
  /** Where to send the buyer. */
  url: string | null;
  accountId: string;
  pack: CreditPack;
}

export interface CreditCheckout {
  start(input: StartCheckoutInput): Promise<StartedCheckout>;
  readonly packs: readonly CreditPack[];
}

/**
 * Sells credit packs through Stripe Checkout. Prices come from the host's pack list, never from
 * the client; the session's metadata names the wallet and the credits, and the signed webhook
 * (`stripeWebhook`) grants them once payment succeeds.
 *
 * @example
 * const checkout = createCreditCheckout({
 *   stripe, db, ledger: createKyselyLedger,
 *   packs: [{ id: "starter", name: "10 credits", credits: 10_000_000, unitAmount: 1000, currency: "usd" }],
 *   successUrl: "https://app.example.com/billing/done",
 *   cancelUrl: "https://app.example.com/billing",
 * });
 * const { url } = await checkout.start({ owner: { userId: principal.userId }, packId: "starter" });
 */
/**
 * The key Stripe sees for a checkout: Stripe's idempotency keys are global to the account, so a
 * caller's key (often a client's `Idempotency-Key` header) is scoped to the wallet and the pack;
 * hashed, so any key length fits Stripe's 255.
 */
function stripeIdempotencyKey(walletId: string, packId: string, key: string): string {
  return `keen-checkout-${createHash("sha256").update(JSON.stringify([walletId, packId, key])).digest("hex")}`;
}

export function createCreditCheckout(options: CreditCheckoutOptions): CreditCheckout {
  const { stripe, db, ledger: ledgerOn, packs, successUrl, cancelUrl } = parseOptions(CreditCheckoutOptions, options, "credit checkout");
  if (new Set(packs.map((p) => p.id)).size !== packs.length) throw new ConfigError("Credit pack ids must be unique");
  const ledger = ledgerOn(db);
  const billing = db as Kysely<BillingTables>;

  return {
    packs,
    async start(input) {
      const pack = packs.find((p) => p.id === input.packId);
      if (!pack) throw new GatewayError("unknown_pack", `No credit pack "${input.packId}"`, { details: { packId: input.packId } });
      const wallet = await ledger.openWallet(input.owner);
      const owner = "userId" in input.owner ? `user:${input.owner.userId}` : `team:${input.owner.teamId}`;
      const metadata = {
        [CHECKOUT_METADATA.account]: wallet.id,
        [CHECKOUT_METADATA.credits]: String(pack.credits),
        [CHECKOUT_METADATA.pack]: pack.id,
        [CHECKOUT_METADATA.owner]: owner,
      };
      const session = await stripe.checkout.sessions.create(
        {
          mode: "payment",
          client_reference_id: wallet.id,
          line_items: [{ quantity: 1, price_data: { currency: pack.currency, unit_amount: pack.unitAmount, product_data: { name: pack.name } } }],
          metadata,
          payment_intent_data: { metadata },
          success_url: successUrl,
          cancel_url: cancelUrl,
          ...(input.customerId ? { customer: input.customerId } : {}),
        },
        input.idempotencyKey ? { idempotencyKey: stripeIdempotencyKey(wallet.id, pack.id, input.idempotencyKey) } : undefined,
      );
      await billing
        .insertInto("billing_checkouts")
        .values({
          session_id: session.id,
          account_id: wallet.id,
          pack_id: pack.id,
          credits: pack.credits,
          amount_total: session.amount_total ?? pack.unitAmount,
          currency: session.currency ?? pack.currency,
          status: "open",
        })
        .onConflict((oc) => oc.column("session_id").doNothing())
        .execute();
      return { sessionId: session.id, url: session.url, accountId: wallet.id, pack };
    },
  };
}
