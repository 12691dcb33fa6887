import { startFakeStripe, type FakeStripe } from "@keen/gateway-kit/testing";
import { afterAll, beforeAll, expect, it } from "vitest";
import { api, describeEachDatabase, signup, useTestServer } from "../testing/harness.js";

const PACKS = [
  { id: "starter", name: "Starter", credits: 10_000_000, unitAmount: 1_000, currency: "usd" },
  { id: "pro", name: "Pro", credits: 100_000_000, unitAmount: 9_000, currency: "usd" },
];

/**
 * The same checkout idempotency key sent again with another pack. Stripe either refuses a key
 * reused with other parameters (a 400 the server answered as 502) or, as the stand-in does,
 * replays the first session: the answer then named the new pack over the old pack's session.
 */
describeEachDatabase("attack: checkout idempotency key reused for another pack", (database) => {
  let fake: FakeStripe;
  beforeAll(async () => {
    fake = await startFakeStripe();
  });
  afterAll(async () => {
    await fake?.close();
  });
  const t = useTestServer(() => ({
    ...database.settings,
    workers: 0,
    modelBaseUrl: "http://127.0.0.1:9",
    stripeSecretKey: fake.clientOptions.apiKey,
    stripeWebhookSecrets: ["whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0"],
    stripeApiUrl: `http://${fake.host}:${fake.port}`,
    creditPacks: PACKS,
    billingSuccessUrl: "https://app.keen.test/billing/done",
    billingCancelUrl: "https://app.keen.test/billing",
  }));

  it("each answer's session is for the pack it names; a retry of the same request is the same session", async () => {
    const owner = await signup(t.url);
    const checkout = (packId: string) => api(t.url, "/v1/billing/checkout", { headers: owner.headers, body: { packId, idempotencyKey: "buy-once-1234" } });
    const starter = await checkout("starter");
    expect(starter.status).toBe(201);
    const pro = await checkout("pro");
    expect(pro.status).toBe(201);
    expect(pro.body.pack).toMatchObject({ id: "pro", unitAmount: 9_000 });
    const sent = fake.sessions.get(pro.body.sessionId)!;
    expect(sent.amount_total).toBe(9_000);
    expect(sent.metadata).toMatchObject({ keen_pack_id: "pro", keen_credits: "100000000" });
    expect(pro.body.sessionId).not.toBe(starter.body.sessionId);
    // The same request again is the same session.
    expect((await checkout("starter")).body.sessionId).toBe(starter.body.sessionId);
    // Stripe never saw one key with two sets of parameters.
    const keys = new Map<string, string>();
    for (const request of fake.requests.filter((r) => r.idempotencyKey)) {
      const seen = keys.get(request.idempotencyKey!);
      if (seen !== undefined) expect(JSON.stringify(request.body)).toBe(seen);
      keys.set(request.idempotencyKey!, JSON.stringify(request.body));
    }
  });
});
