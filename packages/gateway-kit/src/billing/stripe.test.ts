import { randomBytes, randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { bodyParser } from "@koa/bodyparser";
import Koa from "koa";
import Stripe from "stripe";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import { createKyselyLedger } from "../credits/kysely-ledger.js";
import type { Ledger } from "../credits/ledger.js";
import { creditMigrations } from "../credits/migrations.js";
import { migrateToLatest } from "../db/migrations.js";
import { errorHandler, errorStatus } from "../http-error.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { createCreditCheckout, type CreditCheckout } from "./checkout.js";
import { startFakeStripe, type FakeStripe } from "./fake-stripe.js";
import { createUsageMeter } from "./meter.js";
import { billingMigrations } from "./migrations.js";
import { createStripeClient } from "./stripe-client.js";
import { stripeWebhook, type ProcessedEvent } from "./webhook.js";

const SECRET = `whsec_${randomBytes(16).toString("hex")}`;
const OLD_SECRET = `whsec_${randomBytes(16).toString("hex")}`;
const PACKS = [
  { id: "starter", name: "10 credits", credits: 10_000_000, unitAmount: 1_000, currency: "usd" },
  { id: "team", name: "100 credits", credits: 100_000_000, unitAmount: 9_000, currency: "usd" },
];

describeEachDatabase("stripe billing", (fixture) => {
  let fake: FakeStripe;
  let stripe: Stripe;
  let ledger: Ledger;
  let checkout: CreditCheckout;
  let server: Server;
  let base: string;
  const processed: ProcessedEvent[] = [];
  const db = () => fixture.database.db;

  beforeAll(async () => {
    await migrateToLatest(db(), [creditMigrations, billingMigrations]);
    fake = await startFakeStripe();
    stripe = createStripeClient(fake.clientOptions);
    ledger = createKyselyLedger(db());
    checkout = createCreditCheckout({ stripe, db: db(), ledger: createKyselyLedger, packs: PACKS, successUrl: "https://app.test/ok", cancelUrl: "https://app.test/cancel" });
    const app = new Koa();
    app.use(errorHandler());
    const webhook = stripeWebhook({ stripe, db: db(), ledger: createKyselyLedger, signingSecret: [SECRET, OLD_SECRET], onProcessed: (e) => processed.push(e) });
    app.use(async (ctx, next) => (ctx.path === "/stripe/webhook" ? webhook(ctx, next) : next()));
    server = createServer(app.callback());
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server?.close(resolve));
    await fake?.close();
  });

  const event = (type: string, object: Record<string, any>, eventId = `evt_${randomUUID()}`) =>
    JSON.stringify({ id: eventId, object: "event", api_version: "2026-02-25.clover", created: Math.floor(Date.now() / 1000), livemode: false, type, data: { object } });
  const sign = (payload: string, secret = SECRET, timestamp?: number) =>
    stripe.webhooks.generateTestHeaderString({ payload, secret, ...(timestamp !== undefined ? { timestamp } : {}) });
  const post = async (payload: string, signature: string | undefined) => {
    const res = await fetch(`${base}/stripe/webhook`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(signature !== undefined ? { "stripe-signature": signature } : {}) },
      body: payload,
    });
    return { status: res.status, body: (await res.json()) as any };
  };
  const deliver = (payload: string) => post(payload, sign(payload));
  const balanceOf = async (accountId: string) => (await ledger.getAccount(accountId)).balance;
  const eventRows = async (eventId: string) => (await db().selectFrom("stripe_events").selectAll().where("id", "=", eventId).execute()).length;
  const startPaid = async (packId = "starter") => {
    const started = await checkout.start({ owner: { userId: `u_${randomUUID()}` }, packId });
    return { started, session: fake.completeSession(started.sessionId) };
  };

  describe("checkout", () => {
    it("creates a Checkout Session through the SDK with the pack's price and the wallet in its metadata", async () => {
      const userId = `u_${randomUUID()}`;
      const started = await checkout.start({ owner: { userId }, packId: "team", idempotencyKey: `buy:${userId}` });
      const wallet = await ledger.openWallet({ userId });
      expect(started).toMatchObject({ accountId: wallet.id, url: expect.stringContaining(started.sessionId) });
      const sent = fake.requests.filter((r) => r.path === "/v1/checkout/sessions").at(-1)!;
      expect(sent.idempotencyKey).toMatch(/^keen-checkout-[0-9a-f]{64}$/);
      expect(sent.body).toMatchObject({
        mode: "payment",
        client_reference_id: wallet.id,
        metadata: { keen_account_id: wallet.id, keen_credits: "100000000", keen_pack_id: "team", keen_owner: `user:${userId}` },
        line_items: [{ quantity: "1", price_data: { currency: "usd", unit_amount: "9000", product_data: { name: "100 credits" } } }],
      });
      const row = await db().selectFrom("billing_checkouts").selectAll().where("session_id", "=", started.sessionId).executeTakeFirstOrThrow();
      expect(row).toMatchObject({ account_id: wallet.id, status: "open", currency: "usd" });
      expect(Number(row.amount_total)).toBe(9_000);
      // The SDK's retry of the same request creates no second session.
      const again = await checkout.start({ owner: { userId }, packId: "team", idempotencyKey: `buy:${userId}` });
      expect(again.sessionId).toBe(started.sessionId);
    });

    it("keeps one buyer's idempotency key from handing another buyer the first one's session (and wallet)", async () => {
      const [alice, bob] = [`u_${randomUUID()}`, `u_${randomUUID()}`];
      const a = await checkout.start({ owner: { userId: alice }, packId: "starter", idempotencyKey: "checkout-1" });
      const b = await checkout.start({ owner: { userId: bob }, packId: "starter", idempotencyKey: "checkout-1" });
      expect(b.sessionId).not.toBe(a.sessionId);
      expect(fake.sessions.get(b.sessionId)!.metadata).toMatchObject({ keen_account_id: b.accountId });
      expect(b.accountId).toBe((await ledger.openWallet({ userId: bob })).id);
      // Another pack under the same key is another purchase, not Stripe's idempotency error.
      const team = await checkout.start({ owner: { userId: alice }, packId: "team", idempotencyKey: "checkout-1" });
      expect(team.sessionId).not.toBe(a.sessionId);
      expect(fake.sessions.get(team.sessionId)!.metadata).toMatchObject({ keen_pack_id: "team" });
    });

    it("refuses unknown packs and bad options", async () => {
      const unknown = await checkout.start({ owner: { userId: "u_x" }, packId: "gold" }).catch((e: unknown) => e);
      expect(unknown).toMatchObject({ code: "unknown_pack" });
      expect(unknown).not.toHaveProperty("status");
      expect(errorStatus(unknown)).toBe(400);
      // Billing depends on the ledger interface it is handed, never on an implementation of its own.
      expect(() => createCreditCheckout({ stripe, db: db(), packs: PACKS, successUrl: "https://a.test", cancelUrl: "https://a.test" } as never)).toThrow(ConfigError);
      expect(() => stripeWebhook({ stripe, db: db(), signingSecret: SECRET } as never)).toThrow(ConfigError);
      expect(() => createCreditCheckout({ stripe, db: db(), ledger: createKyselyLedger, packs: [], successUrl: "https://a.test", cancelUrl: "https://a.test" })).toThrow(ConfigError);
      expect(() =>
        createCreditCheckout({ stripe, db: db(), ledger: createKyselyLedger, packs: [PACKS[0]!, PACKS[0]!], successUrl: "https://a.test", cancelUrl: "https://a.test" }),
      ).toThrow(/unique/);
      expect(() => createCreditCheckout({ stripe, db: db(), ledger: createKyselyLedger, packs: [{ ...PACKS[0]!, credits: 1.5 }], successUrl: "https://a.test", cancelUrl: "x" })).toThrow(ConfigError);
    });

    it("fails with the SDK's typed error when Stripe rejects the key", async () => {
      const wrong = createStripeClient({ ...fake.clientOptions, apiKey: "sk_test_wrong" });
      const other = createCreditCheckout({ stripe: wrong, db: db(), ledger: createKyselyLedger, packs: PACKS, successUrl: "https://a.test", cancelUrl: "https://a.test" });
      await expect(other.start({ owner: { userId: "u_y" }, packId: "starter" })).rejects.toMatchObject({ type: "StripeAuthenticationError", statusCode: 401 });
    });
  });

  describe("webhook", () => {
    it("grants a paid checkout once, however often the event is delivered", async () => {
      const { started, session } = await startPaid();
      const payload = event("checkout.session.completed", session);
      const first = await deliver(payload);
      expect(first).toEqual({ status: 200, body: { received: true, duplicate: false, outcome: "granted" } });
      expect(await balanceOf(started.accountId)).toBe(10_000_000);
      for (let i = 0; i < 3; i++) expect((await deliver(payload)).body).toMatchObject({ duplicate: true, outcome: "granted" });
      const burst = await Promise.all(Array.from({ length: 8 }, () => deliver(payload)));
      expect(burst.every((r) => r.status === 200)).toBe(true);
      expect(await balanceOf(started.accountId)).toBe(10_000_000);
      const row = await db().selectFrom("billing_checkouts").selectAll().where("session_id", "=", started.sessionId).executeTakeFirstOrThrow();
      expect(row.status).toBe("paid");
      expect(row.grant_transaction_id).toBeTruthy();
      expect(processed.filter((p) => p.grant?.accountId === started.accountId && !p.duplicate)).toHaveLength(1);
    });

    it("grants once when the same session arrives under several event ids, even all at once", async () => {
      const { started, session } = await startPaid();
      const results = await Promise.all([
        deliver(event("checkout.session.completed", session)),
        deliver(event("checkout.session.completed", session)),
        deliver(event("checkout.session.async_payment_succeeded", session)),
      ]);
      expect(results.map((r) => r.status)).toEqual([200, 200, 200]);
      expect(await balanceOf(started.accountId)).toBe(10_000_000);
      expect((await ledger.verify()).ok).toBe(true);
    });

    it("handles delayed payment in either order and never downgrades a paid session", async () => {
      // In order: completed while unpaid, then the async success.
      const a = await checkout.start({ owner: { userId: `u_${randomUUID()}` }, packId: "starter" });
      const unpaid = fake.completeSession(a.sessionId, "unpaid");
      expect((await deliver(event("checkout.session.completed", unpaid))).body.outcome).toBe("pending");
      expect(await balanceOf(a.accountId)).toBe(0);
      const paid = fake.completeSession(a.sessionId, "paid");
      expect((await deliver(event("checkout.session.async_payment_succeeded", paid))).body.outcome).toBe("granted");
      expect(await balanceOf(a.accountId)).toBe(10_000_000);

      // Out of order: the success first, then the older "completed, unpaid" snapshot, then an expiry.
      const b = await checkout.start({ owner: { userId: `u_${randomUUID()}` }, packId: "starter" });
      const unpaidB = fake.completeSession(b.sessionId, "unpaid");
      const paidB = fake.completeSession(b.sessionId, "paid");
      await deliver(event("checkout.session.async_payment_succeeded", paidB));
      await deliver(event("checkout.session.completed", unpaidB));
      await deliver(event("checkout.session.expired", { ...unpaidB, status: "expired" }));
      expect(await balanceOf(b.accountId)).toBe(10_000_000);
      const row = await db().selectFrom("billing_checkouts").select("status").where("session_id", "=", b.sessionId).executeTakeFirstOrThrow();
      expect(row.status).toBe("paid");

      const c = await checkout.start({ owner: { userId: `u_${randomUUID()}` }, packId: "starter" });
      await deliver(event("checkout.session.async_payment_failed", fake.completeSession(c.sessionId, "unpaid")));
      expect((await db().selectFrom("billing_checkouts").select("status").where("session_id", "=", c.sessionId).executeTakeFirstOrThrow()).status).toBe("failed");
      expect(await balanceOf(c.accountId)).toBe(0);
    });

    it("rejects bad, expired and tampered signatures and records nothing", async () => {
      const { started, session } = await startPaid();
      const eventId = `evt_${randomUUID()}`;
      const payload = event("checkout.session.completed", session, eventId);
      const wrong = await post(payload, sign(payload, "whsec_not_ours"));
      expect(wrong.status).toBe(400);
      expect(wrong.body.error.code).toBe("invalid_signature");
      expect((await post(payload, sign(payload, SECRET, Math.floor(Date.now() / 1000) - 600))).status).toBe(400);
      const tampered = payload.replace('"keen_credits":"10000000"', '"keen_credits":"99000000"');
      expect(tampered).not.toBe(payload);
      expect((await post(tampered, sign(payload))).status).toBe(400);
      expect((await post(payload, undefined)).body.error.code).toBe("missing_signature");
      expect((await post(payload, "t=1,v1=deadbeef")).status).toBe(400);
      expect(await eventRows(eventId)).toBe(0);
      expect(await balanceOf(started.accountId)).toBe(0);
      const get = await fetch(`${base}/stripe/webhook`);
      expect(get.status).toBe(405);
    });

    it("accepts a header with several v1 signatures and a rotated-out secret", async () => {
      const { started, session } = await startPaid();
      const payload = event("checkout.session.completed", session);
      const t = Math.floor(Date.now() / 1000);
      const bogus = sign(payload, "whsec_other", t).split(",").find((p) => p.startsWith("v1="))!;
      const good = sign(payload, SECRET, t).split(",").find((p) => p.startsWith("v1="))!;
      expect((await post(payload, `t=${t},${bogus},${good}`)).status).toBe(200);
      expect(await balanceOf(started.accountId)).toBe(10_000_000);
      const second = await startPaid();
      const p2 = event("checkout.session.completed", second.session);
      expect((await post(p2, sign(p2, OLD_SECRET))).status).toBe(200);
      expect(await balanceOf(second.started.accountId)).toBe(10_000_000);
    });

    it("grants only for a checkout this app recorded: an unknown session, a Connect event or another mode gets nothing", async () => {
      const userId = `u_${randomUUID()}`;
      const wallet = await ledger.openWallet({ userId });
      // Signed by Stripe, carrying our metadata keys, but never started through createCreditCheckout.
      const ghost = { id: `cs_test_${randomUUID()}`, object: "checkout.session", payment_status: "paid", amount_total: 1, currency: "usd", metadata: { keen_account_id: wallet.id, keen_credits: "999000000" } };
      const eventId = `evt_${randomUUID()}`;
      const results = await Promise.all(Array.from({ length: 10 }, () => deliver(event("checkout.session.completed", ghost, eventId))));
      expect(results.every((r) => r.status === 200 && r.body.outcome === "refused")).toBe(true);
      expect(await eventRows(eventId)).toBe(1);
      // A Connect event (another account's session) and a live-mode event for a test-mode key.
      const { started, session } = await startPaid();
      const connect = JSON.stringify({ ...JSON.parse(event("checkout.session.completed", session)), account: "acct_other" });
      expect((await deliver(connect)).body.outcome).toBe("refused");
      const live = JSON.stringify({ ...JSON.parse(event("checkout.session.completed", session)), livemode: true });
      expect((await deliver(live)).body.outcome).toBe("refused");
      expect(await balanceOf(wallet.id)).toBe(0);
      expect(await balanceOf(started.accountId)).toBe(0);
      // The genuine event still grants afterwards.
      expect((await deliver(event("checkout.session.completed", session))).body.outcome).toBe("granted");
      expect(await balanceOf(started.accountId)).toBe(10_000_000);
      expect(processed.filter((p) => p.outcome === "refused").map((p) => p.reason)).toEqual(
        expect.arrayContaining([expect.stringContaining("not created by this app"), expect.stringContaining("connected account"), expect.stringContaining("live-mode")]),
      );
    });

    it("refuses a session whose metadata, amount or currency differ from the recorded checkout, and ignores foreign sessions", async () => {
      const { started, session } = await startPaid();
      const forged = { ...session, metadata: { ...session.metadata, keen_credits: "999000000" } };
      expect((await deliver(event("checkout.session.completed", forged))).body.outcome).toBe("refused");
      expect((await deliver(event("checkout.session.completed", { ...session, amount_total: 1 }))).body.outcome).toBe("refused");
      expect((await deliver(event("checkout.session.completed", { ...session, currency: "jpy" }))).body.outcome).toBe("refused");
      expect(await balanceOf(started.accountId)).toBe(0);
      const foreign = await deliver(event("checkout.session.completed", { id: "cs_test_foreign", object: "checkout.session", payment_status: "paid", metadata: {} }));
      expect(foreign.body).toMatchObject({ received: true, outcome: "ignored" });
      expect((await deliver(event("customer.created", { id: "cus_1", object: "customer" }))).body.outcome).toBe("ignored");
      expect(() => stripeWebhook({ stripe: new Stripe("sk_test_other"), db: db(), ledger: createKyselyLedger, signingSecret: SECRET })).toThrow(/livemode/);
    });

    const paidAndGranted = async () => {
      const { started, session } = await startPaid();
      expect((await deliver(event("checkout.session.completed", session))).body.outcome).toBe("granted");
      return { started, session, paymentIntent: session.payment_intent as string };
    };
    const checkoutRow = (sessionId: string) => db().selectFrom("billing_checkouts").selectAll().where("session_id", "=", sessionId).executeTakeFirstOrThrow();

    it("takes refunded credits back once, however often and in whatever order refund.created and charge.refunded arrive (50 concurrent copies)", async () => {
      const { started, paymentIntent } = await paidAndGranted();
      const refund = await stripe.refunds.create({ payment_intent: paymentIntent });
      expect(refund).toMatchObject({ object: "refund", amount: 1_000, payment_intent: paymentIntent });
      const charge = fake.charges.get(paymentIntent)!;
      expect(charge.amount_refunded).toBe(1_000);
      const refundEvent = event("refund.created", refund);
      const chargeEvent = event("charge.refunded", charge);
      const burst = await Promise.all(
        Array.from({ length: 50 }, (_, i) => deliver(i % 3 === 0 ? refundEvent : i % 3 === 1 ? chargeEvent : event(i % 2 ? "charge.refunded" : "refund.created", i % 2 ? charge : refund))),
      );
      expect(burst.every((r) => r.status === 200)).toBe(true);
      expect(await balanceOf(started.accountId)).toBe(0);
      const row = await checkoutRow(started.sessionId);
      expect(row.status).toBe("refunded");
      expect(Number(row.reversed_credits)).toBe(10_000_000);
      const reversals = (await ledger.listEntries(started.accountId)).filter((e) => e.transactionKind === "reversal");
      expect(reversals).toHaveLength(1);
      expect((await ledger.verify()).ok).toBe(true);
      // A late paid snapshot of the same session grants nothing again.
      expect((await deliver(event("checkout.session.async_payment_succeeded", fake.sessions.get(started.sessionId)!))).status).toBe(200);
      expect(await balanceOf(started.accountId)).toBe(0);
    });

    it("reverses a partial refund in proportion, and a refund of spent credits becomes debt that freezes the wallet", async () => {
      const a = await paidAndGranted();
      const partial = await stripe.refunds.create({ payment_intent: a.paymentIntent, amount: 333 });
      expect((await deliver(event("refund.created", partial))).body.outcome).toBe("reversed");
      // 10,000,000 credits x 333/1000, rounded up.
      expect(await balanceOf(a.started.accountId)).toBe(10_000_000 - 3_330_000);
      expect((await deliver(event("charge.refunded", fake.charges.get(a.paymentIntent)!))).body.outcome).toBe("ignored");
      expect((await checkoutRow(a.started.sessionId)).status).toBe("paid");

      const b = await paidAndGranted();
      const run = await ledger.reserve({ account: b.started.accountId, amount: 8_000_000, idempotencyKey: randomUUID(), ttlMs: 60_000 });
      await ledger.settle(run.id, 8_000_000);
      const full = await stripe.refunds.create({ payment_intent: b.paymentIntent });
      const res = await deliver(event("refund.created", full));
      expect(res.body.outcome).toBe("reversed");
      expect(processed.find((p) => p.eventId && p.adjustment?.sessionId === b.started.sessionId)?.adjustment).toMatchObject({ credits: 10_000_000, debt: 8_000_000 });
      expect(await ledger.getAccount(b.started.accountId)).toMatchObject({ balance: 0, debt: 8_000_000 });
      await expect(ledger.reserve({ account: b.started.accountId, amount: 1, idempotencyKey: randomUUID(), ttlMs: 1000 })).rejects.toMatchObject({ code: "wallet_in_debt" });
      // A refund for a payment this app never recorded changes nothing.
      expect((await deliver(event("refund.created", { ...full, id: "re_other", payment_intent: "pi_unknown" }))).body.outcome).toBe("ignored");
      expect((await ledger.verify()).ok).toBe(true);
    });

    it("takes disputed credits back once for dispute.created and funds_withdrawn (50 concurrent copies) and gives them back when the dispute is won", async () => {
      const { started, paymentIntent } = await paidAndGranted();
      const dispute = fake.createDispute(paymentIntent);
      const burst = await Promise.all(
        Array.from({ length: 50 }, (_, i) => deliver(event(i % 2 ? "charge.dispute.created" : "charge.dispute.funds_withdrawn", dispute))),
      );
      expect(burst.every((r) => r.status === 200)).toBe(true);
      expect(burst.filter((r) => r.body.outcome === "reversed")).toHaveLength(1);
      expect(await balanceOf(started.accountId)).toBe(0);
      expect((await checkoutRow(started.sessionId)).status).toBe("refunded");
      const won = await Promise.all(Array.from({ length: 10 }, () => deliver(event("charge.dispute.funds_reinstated", { ...dispute, status: "won" }))));
      expect(won.filter((r) => r.body.outcome === "reinstated")).toHaveLength(1);
      expect(await balanceOf(started.accountId)).toBe(10_000_000);
      expect((await checkoutRow(started.sessionId)).status).toBe("paid");
      // A dispute in another currency than the checkout is refused.
      expect((await deliver(event("charge.dispute.created", { ...dispute, id: "dp_eur", currency: "eur" }))).body.outcome).toBe("refused");
      expect((await ledger.verify()).ok).toBe(true);
    });
  });

  describe("webhook events out of order", () => {
    const checkoutRow = (sessionId: string) => db().selectFrom("billing_checkouts").selectAll().where("session_id", "=", sessionId).executeTakeFirstOrThrow();

    it("a refund delivered before the checkout's completion is still taken back once the checkout is granted", async () => {
      const { started, session } = await startPaid();
      const paymentIntent = session.payment_intent as string;
      const refund = await stripe.refunds.create({ payment_intent: paymentIntent, amount: 400 });
      // Stripe retries a failed delivery for days: the refund can arrive first.
      expect((await deliver(event("refund.created", refund))).status).toBe(200);
      expect((await deliver(event("charge.refunded", fake.charges.get(paymentIntent)!))).status).toBe(200);
      const granted = await deliver(event("checkout.session.completed", session));
      expect(granted.body.outcome).toBe("granted");
      expect(await balanceOf(started.accountId)).toBe(10_000_000 - 4_000_000);
      expect(Number((await checkoutRow(started.sessionId)).reversed_credits)).toBe(4_000_000);
      expect((await ledger.verify()).ok).toBe(true);
    });

    it("a dispute delivered before the completion, concurrently with it, is still taken back", async () => {
      const { started, session } = await startPaid();
      const dispute = fake.createDispute(session.payment_intent as string);
      expect((await deliver(event("charge.dispute.created", dispute))).status).toBe(200);
      const burst = await Promise.all([
        deliver(event("checkout.session.completed", session)),
        ...Array.from({ length: 8 }, (_, i) => deliver(event(i % 2 ? "charge.dispute.created" : "charge.dispute.funds_withdrawn", dispute))),
      ]);
      expect(burst.every((r) => r.status === 200)).toBe(true);
      expect(await balanceOf(started.accountId)).toBe(0);
      expect((await checkoutRow(started.sessionId)).status).toBe("refunded");
      expect((await ledger.verify()).ok).toBe(true);
    });

    it("a refund that failed stays failed when an older pending snapshot of it arrives later", async () => {
      const a = await startPaid();
      expect((await deliver(event("checkout.session.completed", a.session))).body.outcome).toBe("granted");
      const refund = await stripe.refunds.create({ payment_intent: a.session.payment_intent as string, amount: 500 });
      expect((await deliver(event("refund.updated", { ...refund, status: "failed" }))).status).toBe(200);
      expect((await deliver(event("refund.created", { ...refund, status: "pending" }))).status).toBe(200);
      expect(await balanceOf(a.started.accountId)).toBe(10_000_000);
      // In order, the failure gives the credits back.
      const b = await startPaid();
      expect((await deliver(event("checkout.session.completed", b.session))).body.outcome).toBe("granted");
      const second = await stripe.refunds.create({ payment_intent: b.session.payment_intent as string, amount: 500 });
      expect((await deliver(event("refund.created", { ...second, status: "pending" }))).body.outcome).toBe("reversed");
      expect(await balanceOf(b.started.accountId)).toBe(5_000_000);
      expect((await deliver(event("refund.updated", { ...second, status: "failed" }))).body.outcome).toBe("reinstated");
      expect(await balanceOf(b.started.accountId)).toBe(10_000_000);
      expect((await ledger.verify()).ok).toBe(true);
    });

    it("a refund in another currency recorded before the completion is not counted", async () => {
      const { started, session } = await startPaid();
      const refund = await stripe.refunds.create({ payment_intent: session.payment_intent as string, amount: 500 });
      expect((await deliver(event("refund.created", { ...refund, currency: "eur" }))).status).toBe(200);
      expect((await deliver(event("checkout.session.completed", session))).body.outcome).toBe("granted");
      expect(await balanceOf(started.accountId)).toBe(10_000_000);
    });
  });

  describe("webhook mounting", () => {
    const serve = async (app: Koa) => {
      const srv = createServer(app.callback());
      await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
      return { srv, url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}/hook` };
    };

    it("still verifies when a body parser ran first, using the raw text it kept", async () => {
      const app = new Koa();
      app.use(errorHandler());
      app.use(bodyParser());
      app.use(stripeWebhook({ stripe, db: db(), ledger: createKyselyLedger, signingSecret: SECRET }));
      const { srv, url } = await serve(app);
      try {
        const { started, session } = await startPaid();
        const payload = event("checkout.session.completed", session);
        const res = await fetch(url, { method: "POST", headers: { "content-type": "application/json", "stripe-signature": sign(payload) }, body: payload });
        expect(res.status).toBe(200);
        expect(await balanceOf(started.accountId)).toBe(10_000_000);
      } finally {
        await new Promise((resolve) => srv.close(resolve));
      }
    });

    it("refuses bodies over the limit with 413 and bad options at creation", async () => {
      const app = new Koa();
      app.use(errorHandler());
      app.use(stripeWebhook({ stripe, db: db(), ledger: createKyselyLedger, signingSecret: SECRET, maxBodyBytes: 1_000 }));
      const { srv, url } = await serve(app);
      try {
        const payload = event("customer.created", { id: "cus_big", object: "customer", description: "x".repeat(5_000) });
        const res = await fetch(url, { method: "POST", headers: { "stripe-signature": sign(payload) }, body: payload });
        expect(res.status).toBe(413);
      } finally {
        await new Promise((resolve) => srv.close(resolve));
      }
      expect(() => stripeWebhook({ stripe, db: db(), ledger: createKyselyLedger, signingSecret: "" })).toThrow(ConfigError);
      expect(() => stripeWebhook({ stripe, db: db(), ledger: createKyselyLedger, signingSecret: SECRET, toleranceSeconds: 0 })).toThrow(ConfigError);
    });
  });

  describe("usage meter", () => {
    it("reports usage to a Stripe meter once per identifier", async () => {
      const meter = createUsageMeter({ stripe, eventName: "keen_credits" });
      const identifier = `settle:${randomUUID()}`;
      await meter.report({ customerId: "cus_123", value: 4_200, identifier });
      await meter.report({ customerId: "cus_123", value: 4_200, identifier });
      await meter.report({ customerId: "cus_123", value: 10, identifier: `${identifier}-b` });
      expect(fake.meterEvents.get(identifier)).toMatchObject({ event_name: "keen_credits", payload: { stripe_customer_id: "cus_123", value: "4200" } });
      expect([...fake.meterEvents.keys()].filter((k) => k.startsWith(identifier))).toHaveLength(2);
      const sent = fake.requests.filter((r) => r.path === "/v1/billing/meter_events" && r.body.identifier === identifier);
      expect(sent).toHaveLength(2);
      expect(new Set(sent.map((r) => r.idempotencyKey))).toEqual(new Set([`meter:keen_credits:${identifier}`]));
      await expect(meter.report({ customerId: "cus_123", value: -1, identifier: "x" })).rejects.toMatchObject({ code: "invalid_meter_report" });
    });
  });
});
