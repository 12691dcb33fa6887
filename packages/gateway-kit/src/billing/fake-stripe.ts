// A small Stripe API stand-in for tests: it answers the real SDK's requests for checkout
// sessions, refunds, charges and billing meter events over HTTP, with Stripe's error shape and
// idempotent replays.
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export interface FakeStripe {
  host: string;
  port: number;
  /** Options for `createStripeClient` pointing at this server. */
  clientOptions: { apiKey: string; host: string; port: number; protocol: "http"; maxNetworkRetries: number };
  sessions: Map<string, Record<string, any>>;
  /** Meter events, one per distinct identifier. */
  meterEvents: Map<string, Record<string, any>>;
  /** The charge of each paid session, by payment intent id. */
  charges: Map<string, Record<string, any>>;
  /** Opens a dispute on a paid session's charge, as a card holder's bank would; returns the dispute object. */
  createDispute(paymentIntentId: string, amount?: number): Record<string, any>;
  requests: { method: string; path: string; idempotencyKey: string | undefined; body: Record<string, any> }[];
  /** Marks a session paid (or another payment status) as Stripe would once the buyer pays. */
  completeSession(id: string, paymentStatus?: "paid" | "unpaid" | "no_payment_required"): Record<string, any>;
  close(): Promise<void>;
}

/** Decodes Stripe's form encoding (`a[b][0][c]=x`) into nested objects and arrays. */
export function decodeStripeForm(text: string): Record<string, any> {
  const root: Record<string, any> = {};
  for (const [rawKey, value] of new URLSearchParams(text)) {
    const parts = rawKey.split(/\[|\]\[|\]/).filter((part) => part !== "");
    let node: any = root;
    parts.forEach((part, i) => {
      const last = i === parts.length - 1;
      const nextIsIndex = !last && /^\d+$/.test(parts[i + 1]!);
      const keyOf = Array.isArray(node) ? Number(part) : part;
      if (last) node[keyOf] = value;
      else node = node[keyOf] ??= nextIsIndex ? [] : {};
    });
  }
  return root;
}

const id = (prefix: string) => `${prefix}_test_${randomBytes(12).toString("hex")}`;

async function read(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

export async function startFakeStripe(apiKey = "sk_test_fake"): Promise<FakeStripe> {
  const sessions = new Map<string, Record<string, any>>();
  const meterEvents = new Map<string, Record<string, any>>();
  const charges = new Map<string, Record<string, any>>();
  const replies = new Map<string, { status: number; body: unknown }>();
  const requests: FakeStripe["requests"] = [];

  const route = (method: string, path: string, body: Record<string, any>): { status: number; body: unknown } => {
    if (method === "POST" && path === "/v1/checkout/sessions") {
      for (const field of ["mode", "success_url", "line_items"]) {
        if (body[field] === undefined) return error(400, `Missing required param: ${field}.`, field);
      }
      const items = body.line_items as any[];
      const amount = items.reduce((sum, item) => sum + Number(item.price_data?.unit_amount ?? 0) * Number(item.quantity ?? 1), 0);
      const session = {
        id: id("cs"),
        object: "checkout.session",
        mode: body.mode,
        status: "open",
        payment_status: "unpaid",
        amount_total: amount,
        amount_subtotal: amount,
        currency: items[0]?.price_data?.currency ?? "usd",
        client_reference_id: body.client_reference_id ?? null,
        customer: body.customer ?? null,
        metadata: body.metadata ?? {},
        success_url: body.success_url,
        cancel_url: body.cancel_url ?? null,
        created: Math.floor(Date.now() / 1000),
        livemode: false,
        url: null as string | null,
      };
      session.url = `https://checkout.stripe.test/c/pay/${session.id}`;
      sessions.set(session.id, session);
      return { status: 200, body: session };
    }
    const sessionMatch = /^\/v1\/checkout\/sessions\/([^/]+)$/.exec(path);
    if (method === "GET" && sessionMatch) {
      const session = sessions.get(decodeURIComponent(sessionMatch[1]!));
      return session ? { status: 200, body: session } : error(404, `No such checkout.session: '${sessionMatch[1]}'`, "id", "resource_missing");
    }
    if (method === "POST" && path === "/v1/refunds") {
      const charge = [...charges.values()].find((c) => c.payment_intent === body.payment_intent || c.id === body.charge);
      if (!charge) return error(404, `No such payment_intent: '${body.payment_intent ?? body.charge}'`, "payment_intent", "resource_missing");
      const left = charge.amount - charge.amount_refunded;
      const amount = body.amount === undefined ? left : Number(body.amount);
      if (!Number.isInteger(amount) || amount <= 0 || amount > left) {
        return error(400, `Refund amount (${amount}) is greater than unrefunded amount on charge (${left})`, "amount", "charge_already_refunded");
      }
      charge.amount_refunded += amount;
      charge.refunded = charge.amount_refunded === charge.amount;
      const refund = {
        id: id("re"),
        object: "refund",
        amount,
        charge: charge.id,
        payment_intent: charge.payment_intent,
        currency: charge.currency,
        status: "succeeded",
        created: Math.floor(Date.now() / 1000),
        metadata: body.metadata ?? {},
      };
      return { status: 200, body: refund };
    }
    const chargeMatch = /^\/v1\/charges\/([^/]+)$/.exec(path);
    if (method === "GET" && chargeMatch) {
      const charge = [...charges.values()].find((c) => c.id === decodeURIComponent(chargeMatch[1]!));
      return charge ? { status: 200, body: charge } : error(404, `No such charge: '${chargeMatch[1]}'`, "id", "resource_missing");
    }
    if (method === "POST" && path === "/v1/billing/meter_events") {
      if (!body.event_name || !body.payload?.stripe_customer_id || body.payload?.value === undefined) {
        return error(400, "Missing required param: event_name or payload.", "payload");
      }
      const identifier = body.identifier ?? id("mev");
      if (meterEvents.has(identifier)) {
        return error(400, `An event with identifier ${identifier} already exists.`, "identifier", "duplicate_meter_event");
      }
      const event = {
        object: "billing.meter_event",
        created: Math.floor(Date.now() / 1000),
        event_name: body.event_name,
        identifier,
        livemode: false,
        payload: body.payload,
        timestamp: Number(body.timestamp ?? Math.floor(Date.now() / 1000)),
      };
      meterEvents.set(identifier, event);
      return { status: 200, body: event };
    }
    return error(404, `Unrecognized request URL (${method}: ${path}).`, undefined, "resource_missing");
  };

  const server: Server = createServer(async (req, res) => {
    const url = new URL(req.url ?? "/", "http://localhost");
    const text = await read(req);
    const body = req.method === "GET" ? Object.fromEntries(url.searchParams) : decodeStripeForm(text);
    const idempotencyKey = req.headers["idempotency-key"] as string | undefined;
    requests.push({ method: req.method ?? "", path: url.pathname, idempotencyKey, body });
    let reply: { status: number; body: unknown };
    if (req.headers.authorization !== `Bearer ${apiKey}`) {
      reply = error(401, "Invalid API Key provided.", undefined, undefined, "invalid_request_error");
    } else if (idempotencyKey && replies.has(`${req.method} ${url.pathname} ${idempotencyKey}`)) {
      reply = replies.get(`${req.method} ${url.pathname} ${idempotencyKey}`)!;
    } else {
      reply = route(req.method ?? "", url.pathname, body);
      if (idempotencyKey && req.method === "POST") replies.set(`${req.method} ${url.pathname} ${idempotencyKey}`, reply);
    }
    res.writeHead(reply.status, { "content-type": "application/json", "request-id": id("req") });
    res.end(JSON.stringify(reply.body));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;

  return {
    host: "127.0.0.1",
    port,
    clientOptions: { apiKey, host: "127.0.0.1", port, protocol: "http", maxNetworkRetries: 0 },
    sessions,
    meterEvents,
    charges,
    requests,
    completeSession(sessionId, paymentStatus = "paid") {
      const session = sessions.get(sessionId);
      if (!session) throw new Error(`No session ${sessionId}`);
      session.status = "complete";
      session.payment_status = paymentStatus;
      if (paymentStatus === "paid" && !session.payment_intent) {
        session.payment_intent = id("pi");
        charges.set(session.payment_intent, {
          id: id("ch"),
          object: "charge",
          amount: session.amount_total,
          amount_refunded: 0,
          currency: session.currency,
          payment_intent: session.payment_intent,
          refunded: false,
          paid: true,
          livemode: false,
          created: Math.floor(Date.now() / 1000),
        });
      }
      return { ...session };
    },
    createDispute(paymentIntentId, amount) {
      const charge = charges.get(paymentIntentId);
      if (!charge) throw new Error(`No charge for ${paymentIntentId}`);
      return {
        id: id("dp"),
        object: "dispute",
        amount: amount ?? charge.amount,
        charge: charge.id,
        payment_intent: paymentIntentId,
        currency: charge.currency,
        reason: "fraudulent",
        status: "needs_response",
        livemode: false,
        created: Math.floor(Date.now() / 1000),
      };
    },
    close: () => new Promise<void>((resolve, reject) => server.close((e) => (e ? reject(e) : resolve()))),
  };
}

function error(status: number, message: string, param?: string, code?: string, type = "invalid_request_error") {
  return { status, body: { error: { type, message, ...(param ? { param } : {}), ...(code ? { code } : {}) } } };
}
