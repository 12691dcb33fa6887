import { createHmac, randomUUID, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { MessagesServer } from "@keen/agent-core/testing";
import type { Kysely } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ADMIN_EMAIL, api, createTestRepo, describeEachDatabase, eventually, signup, useTestServer, type Account } from "../testing/harness.js";
import type { ServerTables } from "../db/tables.js";
import { scriptedModel } from "../testing/model.js";
import { isPublicAddress } from "./address-policy.js";

/** The harness's accounts' password: registering a webhook re-authenticates. */
const PASSWORD = "correct horse battery staple";

/**
 * A receiver's own Standard Webhooks check, written from the spec and not from the server's
 * signer: key = base64-decoded secret after `whsec_`; signed content `id.timestamp.body`;
 * any of the space-separated `v1,<base64>` entries may match; timestamp within 5 minutes.
 */
function verifyStandardWebhook(secret: string, headers: IncomingHttpHeaders, rawBody: string): boolean {
  const id = headers["webhook-id"];
  const timestamp = headers["webhook-timestamp"];
  const signatures = headers["webhook-signature"];
  if (typeof id !== "string" || typeof timestamp !== "string" || typeof signatures !== "string") return false;
  if (!/^\d+$/.test(timestamp) || Math.abs(Date.now() / 1000 - Number(timestamp)) > 300) return false;
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const expected = createHmac("sha256", key).update(`${id}.${timestamp}.${rawBody}`, "utf8").digest();
  return signatures.split(" ").some((entry) => {
    const [version, value] = entry.split(",", 2);
    if (version !== "v1" || !value) return false;
    const given = Buffer.from(value, "base64");
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
}

interface Received {
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/** A real HTTP receiver on loopback; `answer` picks each response's status (and Location). */
async function startReceiver(answer: (req: Received, index: number) => { status: number; location?: string; body?: string }) {
  const received: Received[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const entry = { path: req.url ?? "/", headers: req.headers, body: Buffer.concat(chunks).toString("utf8") };
      received.push(entry);
      const reply = answer(entry, received.length - 1);
      res.writeHead(reply.status, reply.location ? { location: reply.location } : {});
      res.end(reply.body ?? "");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, received, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

describe("isPublicAddress", () => {
  it.each([
    "127.0.0.1",
    "127.9.9.9",
    "0.0.0.0",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "100.100.100.200",
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fd00:ec2::254",
    "fc00::1",
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "::ffff:a9fe:a9fe",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::",
    "not an address",
  ])("refuses %s", (address) => {
    expect(isPublicAddress(address)).toBe(false);
  });

  it.each(["93.184.216.34", "1.1.1.1", "172.32.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])("accepts %s", (address) => {
    expect(isPublicAddress(address)).toBe(true);
  });
});

describeEachDatabase("webhooks", (database) => {
  let model: MessagesServer;
  beforeAll(async () => {
    model = await scriptedModel();
  });
  afterAll(async () => {
    await model.close();
  });
  // Private targets allowed: the receiver is on loopback. Fast retries so backoff is observable.
  const t = useTestServer(() => ({ ...database.settings, modelBaseUrl: model.url, localMode: true, webhookAllowPrivate: true, webhookRetryBaseMs: 200, webhookMaxAttempts: 3, webhookTimeoutMs: 2_000 }));

  let owner: Account;
  let other: Account;
  beforeAll(async () => {
    owner = await signup(t.url);
    other = await signup(t.url);
    const admin = await signup(t.url, ADMIN_EMAIL);
    const grant = await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: owner.teamId, amount: 100_000_000, idempotencyKey: `grant-${owner.teamId}` } });
    expect(grant.status).toBe(201);
  });

  async function runToEnd(account: Account): Promise<string> {
    const repo = await createTestRepo();
    const created = await api(t.url, "/v1/runs", { headers: account.headers, body: { vision: "Write the notes file", repo: { path: repo } } });
    expect(created.status).toBe(202);
    const runId = created.body.id as string;
    await eventually(async () => {
      const run = await api(t.url, `/v1/runs/${runId}`, { headers: account.headers });
      return ["succeeded", "failed"].includes(run.body.status) ? run.body : undefined;
    }, 60_000, "the run to end");
    return runId;
  }

  it("signs a run's end so an independent verifier accepts it, retries 500s with the same webhook-id, logs every attempt", async () => {
    const receiver = await startReceiver((_req, index) => (index < 2 ? { status: 500, body: "x".repeat(5000) } : { status: 204 }));
    try {
      const created = await api(t.url, "/v1/webhooks", { headers: owner.headers, body: { url: `${receiver.url}/hooks`, events: ["run.completed", "run.failed"], password: PASSWORD } });
      expect(created.status).toBe(201);
      const secret = created.body.secret as string;
      expect(secret).toMatch(/^whsec_[A-Za-z0-9+/]+=*$/);
      expect(Buffer.from(secret.slice(6), "base64").length).toBeGreaterThanOrEqual(24);
      const webhookId = created.body.id as string;

      // The secret is shown once: the list has no secrets.
      const listed = await api(t.url, "/v1/webhooks", { headers: owner.headers });
      expect(listed.body.webhooks.map((w: { id: string }) => w.id)).toContain(webhookId);
      expect(JSON.stringify(listed.body)).not.toContain(secret.slice(6, 20));

      const runId = await runToEnd(owner);
      await eventually(async () => receiver.received.length >= 3, 30_000, "three attempts");
      const [first, second, third] = receiver.received;
      for (const attempt of [first!, second!, third!]) {
        expect(attempt.path).toBe("/hooks");
        expect(verifyStandardWebhook(secret, attempt.headers, attempt.body)).toBe(true);
        // Tampering with the body breaks the signature; so does another secret.
        expect(verifyStandardWebhook(secret, attempt.headers, attempt.body.replace("run.", "run!"))).toBe(false);
        expect(verifyStandardWebhook(`whsec_${Buffer.alloc(32, 1).toString("base64")}`, attempt.headers, attempt.body)).toBe(false);
      }
      // One event: one stable id across attempts, the same body each time.
      expect(new Set(receiver.received.map((r) => r.headers["webhook-id"])).size).toBe(1);
      expect(first!.headers["webhook-id"]).toMatch(/^msg_/);
      expect(second!.body).toBe(first!.body);
      const payload = JSON.parse(first!.body);
      expect(payload.type).toBe("run.completed");
      expect(payload.data.run.id).toBe(runId);
      expect(payload.data.run.status).toBe("succeeded");

      const log = await eventually(async () => {
        const res = await api(t.url, `/v1/webhooks/${webhookId}/deliveries`, { headers: owner.headers });
        return res.body.deliveries?.length >= 3 && res.body.deliveries[0].messageStatus === "delivered" ? res.body.deliveries : undefined;
      }, 10_000, "the delivery log");
      const attempts = [...log].sort((a: { attempt: number }, b: { attempt: number }) => a.attempt - b.attempt);
      expect(attempts.map((d: { attempt: number; statusCode: number }) => [d.attempt, d.statusCode])).toEqual([
        [1, 500],
        [2, 500],
        [3, 204],
      ]);
      expect(attempts[0].error).toContain("500");
      expect(attempts[2].error).toBeNull();
      // The receiver's answer is kept only up to a small cap.
      expect(attempts[0].responseBody.length).toBeLessThanOrEqual(1024);
      expect(attempts.every((d: { webhookId: string; durationMs: number }) => d.webhookId === first!.headers["webhook-id"] && d.durationMs >= 0)).toBe(true);

      // Reporting the same end again enqueues nothing new (one message per endpoint per event).
      await t.server.webhooks.runEnded(runId);
      await new Promise((r) => setTimeout(r, 500));
      expect(receiver.received.length).toBe(3);
    } finally {
      await receiver.close();
      await api(t.url, "/v1/webhooks", { headers: owner.headers }).then(async (res) => {
        for (const w of res.body.webhooks) await api(t.url, `/v1/webhooks/${w.id}`, { method: "DELETE", headers: owner.headers });
      });
    }
  });

  it("sends the end of a run whose process died before writing its messages, once, and not to an endpoint registered later", async () => {
    const receiver = await startReceiver(() => ({ status: 204 }));
    try {
      const early = await api(t.url, "/v1/webhooks", { headers: owner.headers, body: { url: `${receiver.url}/early`, events: ["run.completed"], password: PASSWORD } });
      expect(early.status).toBe(201);
      await new Promise((r) => setTimeout(r, 20));
      // A worker marked this run final, then its process died before `runEnded`: no message rows.
      const db = t.server.database.db as Kysely<ServerTables>;
      const runId = `run_${randomUUID()}`;
      await db
        .insertInto("runs")
        .values({
          id: runId, team_id: owner.teamId, user_id: owner.userId, vision: "v", repo: "{}", options: "{}", model: "m", status: "succeeded", snapshot: null, reservation_id: null,
          charged: null, usage: null, error: null, summary: "done", base_commit: null, head_commit: null, branch: null, worker_id: null,
          heartbeat_at: null, created_at: new Date(), started_at: new Date(), finished_at: new Date(),
        })
        .execute();
      await new Promise((r) => setTimeout(r, 20));
      const late = await api(t.url, "/v1/webhooks", { headers: owner.headers, body: { url: `${receiver.url}/late`, events: ["run.completed"], password: PASSWORD } });
      expect(late.status).toBe(201);

      await t.server.webhooks.sweep(0);
      await eventually(async () => receiver.received.length >= 1, 30_000, "the missed end");
      const payload = JSON.parse(receiver.received[0]!.body);
      expect(payload.type).toBe("run.completed");
      expect(payload.data.run.id).toBe(runId);
      // Sweeping again finds the message written: nothing is sent twice; the later endpoint gets nothing.
      await t.server.webhooks.sweep(0);
      await new Promise((r) => setTimeout(r, 500));
      expect(receiver.received.map((r) => r.path)).toEqual(["/early"]);
    } finally {
      await receiver.close();
      await api(t.url, "/v1/webhooks", { headers: owner.headers }).then(async (res) => {
        for (const w of res.body.webhooks) await api(t.url, `/v1/webhooks/${w.id}`, { method: "DELETE", headers: owner.headers });
      });
    }
  });

  it("gives up after the last attempt and does not follow redirects", async () => {
    const target = await startReceiver(() => ({ status: 200 }));
    const receiver = await startReceiver(() => ({ status: 307, location: `${target.url}/internal` }));
    try {
      const created = await api(t.url, "/v1/webhooks", { headers: owner.headers, body: { url: receiver.url, events: ["run.completed"], password: PASSWORD } });
      expect(created.status).toBe(201);
      await runToEnd(owner);
      const log = await eventually(async () => {
        const res = await api(t.url, `/v1/webhooks/${created.body.id}/deliveries`, { headers: owner.headers });
        return res.body.deliveries?.length === 3 && res.body.deliveries[0].messageStatus === "failed" ? res.body.deliveries : undefined;
      }, 30_000, "three failed attempts");
      expect(log.every((d: { statusCode: number; error: string }) => d.statusCode === 307 && d.error.includes("redirect"))).toBe(true);
      expect(target.received).toHaveLength(0);
      expect(receiver.received).toHaveLength(3);
    } finally {
      await receiver.close();
      await target.close();
      await api(t.url, `/v1/webhooks`, { headers: owner.headers }).then(async (res) => {
        for (const w of res.body.webhooks) await api(t.url, `/v1/webhooks/${w.id}`, { method: "DELETE", headers: owner.headers });
      });
    }
  });

  it("ends an attempt that gets no answer at the per-request deadline", async () => {
    const hanging = createServer(() => {
      // Reads the request and never answers.
    });
    await new Promise<void>((resolve) => hanging.listen(0, "127.0.0.1", resolve));
    try {
      const url = `http://127.0.0.1:${(hanging.address() as AddressInfo).port}/slow`;
      const created = await api(t.url, "/v1/webhooks", { headers: owner.headers, body: { url, events: ["run.cancelled"], password: PASSWORD } });
      const db = t.server.database.db as import("kysely").Kysely<import("../db/tables.js").ServerTables>;
      await db
        .insertInto("webhook_messages")
        .values({ id: "msg_slow", webhook_id: created.body.id, team_id: owner.teamId, event_type: "run.cancelled", subject: "run:slow:1", body: "{}", status: "pending", next_attempt_at: new Date(), created_at: new Date() })
        .execute();
      await t.server.webhooks.attempt({ messageId: "msg_slow", attempt: 1 });
      const log = await api(t.url, `/v1/webhooks/${created.body.id}/deliveries`, { headers: owner.headers });
      expect(log.body.deliveries[0].statusCode).toBeNull();
      expect(log.body.deliveries[0].error).toBe("timed out after 2000 ms");
      expect(log.body.deliveries[0].messageStatus).toBe("pending");
      await api(t.url, `/v1/webhooks/${created.body.id}`, { method: "DELETE", headers: owner.headers });
    } finally {
      hanging.closeAllConnections();
      hanging.close();
    }
  });

  it("keeps endpoints within their team: another team's ids are 404, its runs are not sent", async () => {
    const receiver = await startReceiver(() => ({ status: 200 }));
    try {
      const mine = await api(t.url, "/v1/webhooks", { headers: owner.headers, body: { url: receiver.url, events: ["run.completed", "run.failed"], password: PASSWORD } });
      expect(mine.status).toBe(201);
      const id = mine.body.id as string;
      expect((await api(t.url, `/v1/webhooks/${id}/deliveries`, { headers: other.headers })).status).toBe(404);
      expect((await api(t.url, `/v1/webhooks/${id}`, { method: "DELETE", headers: other.headers })).status).toBe(404);
      expect((await api(t.url, "/v1/webhooks", { headers: other.headers })).body.webhooks).toEqual([]);
      expect((await api(t.url, "/v1/webhooks/wh_not-a-real-id/deliveries", { headers: owner.headers })).status).toBe(404);

      // The other team's run (no credits: it fails or is refused) sends nothing to this endpoint.
      const repo = await createTestRepo();
      await api(t.url, "/v1/runs", { headers: other.headers, body: { vision: "Write the notes file", repo: { path: repo } } });
      await new Promise((r) => setTimeout(r, 1_000));
      expect(receiver.received).toHaveLength(0);

      const deleted = await api(t.url, `/v1/webhooks/${id}`, { method: "DELETE", headers: owner.headers });
      expect(deleted.status).toBe(200);
      expect((await api(t.url, `/v1/webhooks/${id}/deliveries`, { headers: owner.headers })).status).toBe(404);
    } finally {
      await receiver.close();
    }
  });

  it.each([
    ["ftp://example.com/hook"],
    ["file:///etc/passwd"],
    ["https://user:pass@example.com/hook"],
    ["not a url"],
  ])("refuses %s with a 4xx", async (url) => {
    const res = await api(t.url, "/v1/webhooks", { headers: owner.headers, body: { url, events: ["run.completed"], password: PASSWORD } });
    expect(res.status).toBe(422);
    expect(res.body.error.code).toBe("webhook_url_refused");
  });

  it("refuses unknown events and extra fields with a 400", async () => {
    const bad = await api(t.url, "/v1/webhooks", { headers: owner.headers, body: { url: "https://example.com/h", events: ["run.exploded"], password: PASSWORD } });
    expect(bad.status).toBe(400);
    const extra = await api(t.url, "/v1/webhooks", { headers: owner.headers, body: { url: "https://example.com/h", events: ["run.completed"], secret: "mine", password: PASSWORD } });
    expect(extra.status).toBe(400);
  });
});

describe("webhooks without private targets (the default)", () => {
  const t = useTestServer(() => ({ workers: 1, webhookRetryBaseMs: 50, webhookMaxAttempts: 1 }));
  let owner: Account;
  beforeAll(async () => {
    owner = await signup(t.url);
  });

  it.each([
    ["http://127.0.0.1:9/hook"],
    ["http://localhost/hook"],
    ["http://[::1]/hook"],
    ["http://169.254.169.254/latest/meta-data/"],
    ["http://10.0.0.8/hook"],
    ["http://192.168.0.1/hook"],
    ["http://2130706433/hook"],
    ["http://0x7f.1/hook"],
    ["http://[::ffff:127.0.0.1]/hook"],
    ["http://0.0.0.0/hook"],
  ])("refuses %s at registration", async (url) => {
    const res = await api(t.url, "/v1/webhooks", { headers: owner.headers, body: { url, events: ["run.completed"], password: PASSWORD } });
    expect(res.status).toBe(422);
    expect(res.body.error.code).toBe("webhook_url_refused");
  });

  it("checks the address again at delivery time: an endpoint that now points inside is refused, not called", async () => {
    const receiver = await startReceiver(() => ({ status: 200 }));
    try {
      // Stands for a name that resolved to a public address at registration and was re-pointed
      // at loopback since: the row is written directly, past the registration check.
      const db = t.server.database.db as import("kysely").Kysely<import("../db/tables.js").ServerTables>;
      await db
        .insertInto("webhooks")
        .values({ id: "wh_00000000-0000-4000-8000-000000000001", team_id: owner.teamId, user_id: owner.userId, url: `${receiver.url}/hook`, events: JSON.stringify(["run.cancelled"]), secret: `whsec_${Buffer.alloc(32, 7).toString("base64")}`, created_at: new Date() })
        .execute();
      await db
        .insertInto("webhook_messages")
        .values({ id: "msg_rebound", webhook_id: "wh_00000000-0000-4000-8000-000000000001", team_id: owner.teamId, event_type: "run.cancelled", subject: "run:x:1", body: "{}", status: "pending", next_attempt_at: new Date(), created_at: new Date() })
        .execute();
      await t.server.webhooks.attempt({ messageId: "msg_rebound", attempt: 1 });
      const log = await api(t.url, "/v1/webhooks/wh_00000000-0000-4000-8000-000000000001/deliveries", { headers: owner.headers });
      expect(log.body.deliveries).toHaveLength(1);
      expect(log.body.deliveries[0].statusCode).toBeNull();
      expect(log.body.deliveries[0].error).toMatch(/^refused: .*non-public/);
      expect(log.body.deliveries[0].messageStatus).toBe("failed");
      expect(receiver.received).toHaveLength(0);
    } finally {
      await receiver.close();
    }
  });
});
