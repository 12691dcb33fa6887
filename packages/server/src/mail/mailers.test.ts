import { mkdtemp, readdir, rm } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MailMessage } from "@keen/gateway-kit";
import { mailerContract } from "@keen/gateway-kit/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { api, signup, useTestServer } from "../testing/harness.js";
import { outboxMailer, readOutbox } from "./outbox-mailer.js";
import { webhookMailer } from "./webhook-mailer.js";

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "keen-outbox-"));
});
afterAll(() => rm(root, { recursive: true, force: true }));

const only = ({ to, subject, text }: MailMessage): MailMessage => ({ to, subject, text });

mailerContract("outbox", () => {
  const dir = join(root, "outbox");
  return { mailer: outboxMailer({ dir }), read: async (to) => (await readOutbox(dir)).filter((m) => m.to === to).map(only) };
});

it("leaves no partly written file behind, and an absent outbox reads as empty", async () => {
  const dir = join(root, "whole");
  expect(await readOutbox(dir)).toEqual([]);
  const mailer = outboxMailer({ dir });
  await Promise.all(Array.from({ length: 10 }, (_, i) => mailer.send({ to: "ada@example.test", subject: `m${i}`, text: "x\n" })));
  const names = await readdir(dir);
  expect(names).toHaveLength(10);
  expect(names.every((name) => name.endsWith(".eml") && !name.startsWith("."))).toBe(true);
});

// A stand-in for the operator's relay: keeps what it accepted, refuses a wrong token.
const received: MailMessage[] = [];
let relay: Server;
let relayUrl: string;
beforeAll(async () => {
  relay = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      if (req.headers.authorization !== "Bearer relay-token-0123456789") {
        res.writeHead(401).end();
        return;
      }
      received.push(JSON.parse(body) as MailMessage);
      res.writeHead(202).end("{}");
    });
  });
  await new Promise<void>((resolve) => relay.listen(0, "127.0.0.1", resolve));
  relayUrl = `http://127.0.0.1:${(relay.address() as AddressInfo).port}/send`;
});
afterAll(() => new Promise<void>((resolve) => relay.close(() => resolve())));

mailerContract("webhook", () => ({
  mailer: webhookMailer({ url: relayUrl, token: "relay-token-0123456789" }),
  read: async (to) => received.filter((m) => m.to === to),
}));

it("fails the send when the webhook refuses it", async () => {
  await expect(webhookMailer({ url: relayUrl, token: "wrong-token-0123456789" }).send({ to: "ada@example.test", subject: "s", text: "t" })).rejects.toThrow(/401/);
});

describe("a server whose mail relay fails", () => {
  const started = useTestServer(() => ({ mailWebhookUrl: relayUrl, mailWebhookToken: "wrong-token-0123456789" }));

  it("answers 502 email_delivery_failed, not a 500, and a later request can still send", async () => {
    const account = await signup(started.url);
    const asked = await api(started.url, "/v1/auth/email/verification", { headers: account.headers, body: {} });
    expect(asked.status).toBe(502);
    expect(asked.body.error).toMatchObject({ code: "email_delivery_failed" });
    expect(typeof asked.body.error.requestId).toBe("string");
    expect(JSON.stringify(asked.body)).not.toMatch(/401|relay-token|127\.0\.0\.1/);
  });
});
