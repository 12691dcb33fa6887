import { createHash, generateKeyPairSync } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { PassThrough } from "node:stream";
import Koa from "koa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mintApiKey } from "../auth/api-keys.js";
import { errorHandler, HttpError } from "../http-error.js";
import { redactResponses, redactSecrets, redactSecretsDeep, redactStream } from "./redact.js";

// Built at run time so no scanner mistakes this file for a leak.
const fake = (prefix: string, length: number, alphabet = "AbCdEfGh1234567890") =>
  prefix + Array.from({ length }, (_, i) => alphabet[(i * 7 + 3) % alphabet.length]).join("");

const anthropic = fake("sk-ant-api03-", 90);
const openaiProject = fake("sk-proj-", 120);
const openaiLegacy = fake("sk-", 48);
const github = fake("ghp_", 36);
const githubPat = fake("github_pat_", 70);
const stripe = fake("sk_live_", 24);
const stripeWebhook = fake("whsec_", 32);
const awsId = "AKIA" + "IOSFODNN7EXAMPLE";
const awsSecret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const jwt = ["eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9", "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ", "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"].join(".");
const pem = generateKeyPairSync("ed25519").privateKey.export({ format: "pem", type: "pkcs8" }).toString();

describe("redactSecrets", () => {
  it.each([
    ["anthropic_key", `ANTHROPIC_API_KEY=${anthropic}`, anthropic],
    ["openai_key", `key: ${openaiProject} end`, openaiProject],
    ["openai_key", `OPENAI_API_KEY="${openaiLegacy}"`, openaiLegacy],
    ["github_token", `token ${github}`, github],
    ["github_token", `GH=${githubPat}`, githubPat],
    ["stripe_key", `stripe.secret=${stripe}`, stripe],
    ["stripe_key", `webhook secret ${stripeWebhook}`, stripeWebhook],
    ["aws_access_key_id", `aws_access_key_id = ${awsId}`, awsId],
    ["aws_secret_access_key", `aws_secret_access_key = ${awsSecret}`, awsSecret],
    ["jwt", `cookie: session=${jwt}; Path=/`, jwt],
    ["bearer_token", "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345", "abcdefghijklmnopqrstuvwxyz012345"],
    ["url_password", "git clone https://bob:hunter2hunter2@git.example.com/r.git", "hunter2hunter2"],
    ["url_password", "DATABASE_URL=postgres://app:s3cr%40t@db:5432/app", "s3cr%40t"],
  ])("masks a %s", (kind, text, secret) => {
    const out = redactSecrets(text);
    expect(out).not.toContain(secret);
    expect(out).toContain(`[REDACTED:${kind}]`);
  });

  it("masks a keen API key's secret and keeps its lookup prefix", () => {
    const { key, prefix } = mintApiKey();
    const out = redactSecrets(`use ${key} for CI`);
    expect(out).toBe(`use keen_${prefix}_[REDACTED:keen_api_key] for CI`);
  });

  it("masks a whole PEM private key, also a truncated one", () => {
    const out = redactSecrets(`here it is:\n${pem}\nthanks`);
    expect(out).toBe("here it is:\n[REDACTED:private_key]\n\nthanks");
    const cut = redactSecrets(`partial: ${pem.slice(0, 60)}`);
    expect(cut).toBe("partial: [REDACTED:private_key]");
    const rsa = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
    expect(redactSecrets(rsa)).toBe("[REDACTED:private_key]");
  });

  it("leaves ordinary text, hashes, ids and public material alone", () => {
    const sha = createHash("sha256").update("x").digest("hex");
    const benign = [
      `commit ${"a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"} fixes the parser`,
      `sha256 ${sha}`,
      "postgres://postgres@127.0.0.1:5432/test",
      "https://example.com/path?a=b&c=d",
      "mailto:someone@example.com",
      "The token bucket refills every second; bearer tokens are checked by authenticate().",
      "sk-learn is not a key, nor is sk_test_ alone",
      "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----",
      "uuid 3f2b8c1e-9d4a-4f7e-8b2c-1a2b3c4d5e6f and ULID 01HZY3K4M5N6P7Q8R9S0T1V2W3",
      "Bearer short",
      "const password = process.env.DB_PASSWORD;",
      "pk_live_51Habcdefghijklmnop is a publishable key",
    ];
    for (const text of benign) expect(redactSecrets(text)).toBe(text);
  });

  it("is idempotent", () => {
    const once = redactSecrets(`${github} ${jwt} https://a:b@c.example`);
    expect(redactSecrets(once)).toBe(once);
  });
});

describe("redactSecretsDeep", () => {
  it("walks objects and arrays, masks sensitive keys and leaves the input alone", () => {
    const event = {
      type: "tool.completed",
      seq: 7,
      ok: true,
      output: { stdout: `export GITHUB_TOKEN=${github}\n`, lines: [`Bearer ${"x".repeat(20)}`, "fine"] },
      request: { headers: { Authorization: "Basic Zm9vOmJhcg==", "X-Api-Key": "opaque-value" }, password: "p" },
      at: new Date(0),
    };
    const out = redactSecretsDeep(event);
    expect(out).toEqual({
      type: "tool.completed",
      seq: 7,
      ok: true,
      output: { stdout: "export GITHUB_TOKEN=[REDACTED:github_token]\n", lines: ["Bearer [REDACTED:bearer_token]", "fine"] },
      request: { headers: { Authorization: "[REDACTED:sensitive_field]", "X-Api-Key": "[REDACTED:sensitive_field]" }, password: "[REDACTED:sensitive_field]" },
      at: new Date(0),
    });
    expect(event.output.stdout).toContain(github);
  });

  it("copies shared references like JSON does", () => {
    const shared = { note: github };
    expect(redactSecretsDeep({ a: shared, b: [shared, shared] })).toEqual({ a: { note: "[REDACTED:github_token]" }, b: [{ note: "[REDACTED:github_token]" }, { note: "[REDACTED:github_token]" }] });
  });

  it("survives cycles", () => {
    const a: Record<string, unknown> = { token: "t", note: github };
    a.self = a;
    expect(redactSecretsDeep(a)).toEqual({ token: "[REDACTED:sensitive_field]", note: "[REDACTED:github_token]", self: undefined });
  });
});

describe("redactStream", () => {
  it("catches a secret split across chunks", async () => {
    const stream = redactStream();
    const out: string[] = [];
    stream.on("data", (c: Buffer | string) => out.push(c.toString()));
    const line = `data: {"output":"${github}"}\n\n`;
    for (let i = 0; i < line.length; i += 5) stream.write(line.slice(i, i + 5));
    stream.end();
    await new Promise((resolve) => stream.on("end", resolve));
    expect(out.join("")).toBe('data: {"output":"[REDACTED:github_token]"}\n\n');
  });
});

describe("redactResponses() middleware", () => {
  let url = "";
  let close: () => Promise<void>;
  beforeAll(async () => {
    const app = new Koa();
    app.use(errorHandler());
    app.use(redactResponses());
    app.use(async (ctx) => {
      if (ctx.path === "/json") ctx.body = { event: { type: "tool.completed", output: `key ${stripe}` } };
      else if (ctx.path === "/text") ctx.body = `db at postgres://u:pw-secret@db/x`;
      else if (ctx.path === "/error") throw new HttpError(400, "bad", `could not use ${github}`);
      else if (ctx.path === "/binary") ctx.body = Buffer.from(`raw ${github}`);
      else if (ctx.path === "/sse") {
        const stream = new PassThrough();
        ctx.type = "text/event-stream";
        ctx.body = stream;
        stream.write(`id: 1\ndata: {"text":"${anthropic.slice(0, 30)}`);
        setTimeout(() => stream.end(`${anthropic.slice(30)}"}\n\n`), 20);
      }
    });
    const server = createServer(app.callback());
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    close = () => new Promise((resolve) => server.close(() => resolve()));
  });
  afterAll(() => close());

  it("masks JSON, text, error and SSE bodies, and leaves binary alone", async () => {
    expect(await (await fetch(`${url}/json`)).json()).toEqual({ event: { type: "tool.completed", output: "key [REDACTED:stripe_key]" } });
    expect(await (await fetch(`${url}/text`)).text()).toBe("db at postgres://u:[REDACTED:url_password]@db/x");
    const error = await fetch(`${url}/error`);
    expect(error.status).toBe(400);
    expect(await error.json()).toEqual({ error: { code: "bad", message: "could not use [REDACTED:github_token]" } });
    const sse = await fetch(`${url}/sse`);
    expect(sse.headers.get("content-type")).toMatch(/text\/event-stream/);
    expect(await sse.text()).toBe('id: 1\ndata: {"text":"[REDACTED:anthropic_key]"}\n\n');
    expect(await (await fetch(`${url}/binary`)).text()).toBe(`raw ${github}`);
  });
});
