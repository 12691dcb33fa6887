import type { Router } from "@koa/router";
import { createCreditCheckout, createKyselyLedger, createStripeClient, stripeWebhook, validate, type AuthService, type CreditCheckout } from "@keen/gateway-kit";
import type { Kysely } from "kysely";
import type { Middleware } from "koa";
import type { Logger } from "pino";
import type * as z from "zod";
import type { ServerConfig } from "../config.js";
import { ServerError } from "../errors.js";
import { lockLiveUser } from "../privacy/live-user.js";
import { requestedTeam, teamAccess } from "../teams/access.js";
import { CheckoutBody } from "./billing-input.js";
import { jsonBody } from "../http/json-body.js";

/** The Stripe client options a config names: Stripe's own API, or the URL of a local stand-in. */
function stripeOptions(config: ServerConfig) {
  const base = config.stripeApiUrl ? new URL(config.stripeApiUrl) : undefined;
  return {
    apiKey: config.stripeSecretKey!,
    ...(base
      ? { host: base.hostname, protocol: base.protocol.replace(":", "") as "http" | "https", port: Number(base.port || (base.protocol === "http:" ? 80 : 443)), maxNetworkRetries: 0 }
      : {}),
  };
}

/** True for the errors the Stripe SDK throws (it talks to Stripe, so they are not the caller's fault). */
const isStripeError = (error: unknown) => typeof (error as { type?: unknown })?.type === "string" && String((error as { type: string }).type).startsWith("Stripe");

/**
 * Billing: `POST /v1/billing/checkout` (authenticated, on the `/v1` router) starts a Stripe
 * Checkout Session for one of the configured credit packs through gateway-kit's
 * `createCreditCheckout`, for the team wallet (owners only: `billing:manage`); the signed
 * webhook (`POST /v1/billing/webhook`, mounted by `billingWebhook` on the public router, before
 * any body parser) grants the credits once per paid session however often Stripe delivers it.
 * With no Stripe key configured both answer 503 `billing_unavailable`.
 */
export function mountBillingRoutes(router: Router, deps: { db: Kysely<any>; auth: AuthService; config: ServerConfig }): void {
  const { config, auth } = deps;
  const checkout: CreditCheckout | undefined = config.stripeSecretKey
    ? createCreditCheckout({ stripe: createStripeClient(stripeOptions(config)), db: deps.db, ledger: (trx) => createKyselyLedger(trx), packs: config.creditPacks, successUrl: config.billingSuccessUrl!, cancelUrl: config.billingCancelUrl! })
    : undefined;
  const json = jsonBody({ limit: 4 * 1024 });

  router.get("/billing/packs", async (ctx) => {
    ctx.body = { enabled: !!checkout, packs: config.creditPacks.map(({ id, name, credits, unitAmount, currency }) => ({ id, name, credits, unitAmount, currency })) };
  });

  router.post("/billing/checkout", json, validate({ body: CheckoutBody }), async (ctx) => {
    const principal = ctx.state.principal!;
    const body = ctx.state.validated!.body as z.output<typeof CheckoutBody>;
    const access = await teamAccess(auth, principal, requestedTeam(principal, body.teamId), "billing:manage");
    if (!checkout) throw new ServerError("billing_unavailable", "Billing is not configured on this server");
    // Not for an erased user. The check is not held across the call to Stripe (a database
    // transaction open for a network round trip): what a checkout creates, a Stripe session and
    // the team's checkout row, belongs to the team's wallet and names no user.
    await (deps.db as Kysely<any>).transaction().execute((trx) => lockLiveUser(trx, principal.userId));
    try {
      const started = await checkout.start({
        owner: { teamId: access.teamId },
        packId: body.packId,
        // Scoped to the team and the pack: two teams' keys never meet at Stripe, and a key sent
        // again with another pack is another request (Stripe refuses a key reused with other
        // parameters, and a replay would be the first pack's session under the second's name).
        ...(body.idempotencyKey ? { idempotencyKey: `keen-checkout:${access.teamId}:${body.packId}:${body.idempotencyKey}` } : {}),
      });
      ctx.status = 201;
      ctx.body = { sessionId: started.sessionId, url: started.url, teamId: access.teamId, pack: { id: started.pack.id, credits: started.pack.credits, unitAmount: started.pack.unitAmount, currency: started.pack.currency } };
    } catch (error) {
      if (isStripeError(error)) {
        ctx.state.log?.warn({ err: error }, "stripe checkout failed");
        throw new ServerError("payment_provider_error", "The payment provider refused or could not be reached; try again later");
      }
      throw error;
    }
  });
}

/**
 * The Stripe webhook endpoint: no bearer token (Stripe signs the raw body instead), so it is
 * mounted outside the authenticated router. gateway-kit's `stripeWebhook` verifies the
 * signature and records each event id with its effect in one transaction.
 */
export function billingWebhook(deps: { db: Kysely<any>; config: ServerConfig; logger: Logger }): Middleware {
  const { config } = deps;
  if (!config.stripeSecretKey) {
    return async () => {
      throw new ServerError("billing_unavailable", "Billing is not configured on this server");
    };
  }
  return stripeWebhook({
    stripe: createStripeClient(stripeOptions(config)),
    db: deps.db,
    ledger: (trx) => createKyselyLedger(trx),
    signingSecret: config.stripeWebhookSecrets,
    onProcessed: (event) => deps.logger.info({ stripeEvent: event.eventId, type: event.type, outcome: event.outcome, duplicate: event.duplicate }, "stripe event"),
  });
}
