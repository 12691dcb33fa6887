import { randomBytes, randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { bodyParser } from "@koa/bodyparser";
import Koa from "koa";
import type Stripe from "stripe";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKyselyLedger } from "../credits/kysely-ledger.js";
import type { Ledger } from "../credits/ledger.js";
import { creditMigrations } from "../credits/migrations.js";
import { migrateToLatest } from "../db/migrations.js";
import { errorHandler } from "../http-error.js";
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
    checkout = createCreditCheckout({ stripe, db: db(), packs: PACKS, successUrl: "https://app.test/ok", cancelUrl: "https://app.test/cancel" });
    const app = new Koa();
    app.use(errorHandler());
    const webhook = stripeWebhook({ stripe, db: db(), signingSecret: [SECRET, OLD_SECRET], onProcessed: (e) => processed.push(e) });
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
      const sent = fake.requests.find((r) => r.path === "/v1/checkout/sessions" && r.idempotencyKey === `buy:${userId}`)!;
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

    it("refuses unknown packs and bad options", async () => {
      await expect(checkout.start({ owner: { userId: "u_x" }, packId: "gold" })).rejects.toMatchObject({ status: 400, code: "unknown_pack" });
      expect(() => createCreditCheckout({ stripe, db: db(), packs: [], successUrl: "https://a.test", cancelUrl: "https://a.test" })).toThrow(TypeError);
      expect(() =>
        createCreditCheckout({ stripe, db: db(), packs: [PACKS[0]!, PACKS[0]!], successUrl: "https://a.test", cancelUrl: "https://a.test" }),
      ).toThrow(/unique/);
      expect(() => createCreditCheckout({ stripe, db: db(), packs: [{ ...PACKS[0]!, credits: 1.5 }], successUrl: "https://a.test", cancelUrl: "x" })).toThrow(TypeError);
    });

    it("fails with the SDK's typed error when Stripe rejects the key", async () => {
      const wrong = createStripeClient({ ...fake.clientOptions, apiKey: "sk_test_wrong" });
      const other = createCreditCheckout({ stripe: wrong, db: db(), packs: PACKS, successUrl: "https://a.test", cancelUrl: "https://a.test" });
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

    it("records the event only together with its grant: a failed grant leaves nothing, and the retry succeeds", async () => {
      const userId = `u_${randomUUID()}`;
      const wallet = await ledger.openWallet({ userId });
      const ghost = `missing-${randomUUID()}`;
      const eventId = `evt_${randomUUID()}`;
      const session = { id: `cs_test_${randomUUID()}`, object: "checkout.session", payment_status: "paid", metadata: { keen_account_id: ghost, keen_credits: "5000" } };
      const failed = await deliver(event("checkout.session.completed", session, eventId));
      expect(failed.status).toBe(404);
      expect(await eventRows(eventId)).toBe(0);
      // Same event id, now pointing at a real wallet (as after the host repaired its data).
      const fixed = { ...session, metadata: { keen_account_id: wallet.id, keen_credits: "5000" } };
      expect((await deliver(event("checkout.session.completed", fixed, eventId))).status).toBe(200);
      expect(await eventRows(eventId)).toBe(1);
      expect(await balanceOf(wallet.id)).toBe(5_000);
    });

    it("refuses metadata that does not match the session this app created, and ignores foreign sessions", async () => {
      const { started, session } = await startPaid();
      const forged = { ...session, metadata: { ...session.metadata, keen_credits: "999000000" } };
      expect((await deliver(event("checkout.session.completed", forged))).status).toBe(400);
      expect(await balanceOf(started.accountId)).toBe(0);
      const foreign = await deliver(event("checkout.session.completed", { id: "cs_test_foreign", object: "checkout.session", payment_status: "paid", metadata: {} }));
      expect(foreign.body).toMatchObject({ received: true, outcome: "ignored" });
      expect((await deliver(event("customer.created", { id: "cus_1", object: "customer" }))).body.outcome).toBe("ignored");
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
      app.use(stripeWebhook({ stripe, db: db(), signingSecret: SECRET }));
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
      app.use(stripeWebhook({ stripe, db: db(), signingSecret: SECRET, maxBodyBytes: 1_000 }));
      const { srv, url } = await serve(app);
      try {
        const payload = event("customer.created", { id: "cus_big", object: "customer", description: "x".repeat(5_000) });
        const res = await fetch(url, { method: "POST", headers: { "stripe-signature": sign(payload) }, body: payload });
        expect(res.status).toBe(413);
      } finally {
        await new Promise((resolve) => srv.close(resolve));
      }
      expect(() => stripeWebhook({ stripe, db: db(), signingSecret: "" })).toThrow(TypeError);
      expect(() => stripeWebhook({ stripe, db: db(), signingSecret: SECRET, toleranceSeconds: 0 })).toThrow(TypeError);
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
      await expect(meter.report({ customerId: "cus_123", value: -1, identifier: "x" })).rejects.toThrow(TypeError);
    });
  });
});
