// Redaction attacked: characters and keys split across stream chunks, multi-line keys streamed a
// line at a time, keys in disguise (lower case, percent-encoded, glued to a prefix), sensitive
// keys in NDJSON and SSE, and JSON nested deeper than any call stack.
import { generateKeyPairSync } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { PassThrough, Readable } from "node:stream";
import { Router } from "@koa/router";
import Koa from "koa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { errorHandler, HttpError } from "../http-error.js";
import { markOwnerSecrets, ownerSecrets, redactResponses, redactSecrets, redactSecretsDeep, redactStream, type RedactStreamOptions } from "./redact.js";

const fake = (prefix: string, length: number, alphabet = "AbCdEfGh1234567890") => prefix + Array.from({ length }, (_, i) => alphabet[(i * 7 + 3) % alphabet.length]).join("");
const anthropic = fake("sk-ant-api03-", 90);
const github = fake("ghp_", 36);
const pem = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ format: "pem", type: "pkcs1" }).toString();
const keyLines = pem.split("\n").filter((l) => l && !l.startsWith("-----"));

async function streamThrough(chunks: Array<Buffer | string>, options: RedactStreamOptions = {}): Promise<string> {
  const out: Buffer[] = [];
  const stream = Readable.from(chunks, { objectMode: false }).pipe(redactStream(options));
  for await (const chunk of stream) out.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(out).toString("utf8");
}

describe("redactStream", () => {
  it("keeps multi-byte characters whole when their bytes arrive in different chunks", async () => {
    const text = "naïve café — 日本語 😀 done\n";
    const bytes = Buffer.from(text, "utf8");
    const oneByteChunks = Array.from(bytes, (b) => Buffer.from([b]));
    expect(await streamThrough(oneByteChunks)).toBe(text);
  });

  it("masks every line of a PEM key streamed one line per chunk", async () => {
    const lines = `log: starting\n${pem}log: done ${github}\n`.split(/(?<=\n)/);
    const out = await streamThrough(lines);
    for (const line of keyLines) expect(out).not.toContain(line);
    expect(out).toBe(`log: starting\n[REDACTED:private_key]\nlog: done [REDACTED:github_token]\n`);
  });

  it("masks a PEM key split at arbitrary points, also inside its BEGIN line", async () => {
    const text = `key:\n${pem}after\n`;
    const chunks = Array.from({ length: Math.ceil(text.length / 7) }, (_, i) => text.slice(i * 7, i * 7 + 7));
    const out = await streamThrough(chunks);
    for (const line of keyLines) expect(out).not.toContain(line);
    expect(out).toBe("key:\n[REDACTED:private_key]\nafter\n");
  });

  it("resumes after maxKeyBytes when a BEGIN line never ends", async () => {
    const out = await streamThrough(["-----BEGIN PRIVATE KEY-----\n", "x\n".repeat(50), "visible again\n"], { maxKeyBytes: 60 });
    // The first lines past the limit are swallowed with the key; what follows is visible again.
    expect(out).toBe(`[REDACTED:private_key]${"x\n".repeat(19)}visible again\n`);
  });

  it("masks sensitive keys in NDJSON and SSE data lines when told the lines are JSON", async () => {
    const lines = ['{"user":"bob","password":"hunter2"}\n', 'data: {"headers":{"authorization":"opaque-value"}}\n', "\n", "plain line\n"];
    const out = await streamThrough(lines, { jsonLines: true });
    expect(out).toBe('{"user":"bob","password":"[REDACTED:sensitive_field]"}\ndata: {"headers":{"authorization":"[REDACTED:sensitive_field]"}}\n\nplain line\n');
  });
});

describe("redactSecrets: keys in disguise", () => {
  it.each([
    ["bearer_token", "authorization: bearer abcdefghijklmnopqrstuvwxyz012345", "abcdefghijklmnopqrstuvwxyz012345"],
    ["bearer_token", "AUTHORIZATION: BEARER abcdefghijklmnopqrstuvwxyz012345", "abcdefghijklmnopqrstuvwxyz012345"],
    ["anthropic_key", `key_${anthropic}`, anthropic],
    ["anthropic_key", `ANTHROPIC_API_KEY_${anthropic}`, anthropic],
    ["github_token", `token_${github}`, github],
    ["anthropic_key", `https://proxy.example/v1?k=${encodeURIComponent(anthropic).replace(/-/g, "%2D")}`, anthropic.slice(14)],
    ["github_token", `redirect=${encodeURIComponent(`https://x.example/?t=${github}`)}`, github.slice(4)],
    ["url_parameter", "GET /callback?code=abc&access_token=opaque-secret-value&state=1", "opaque-secret-value"],
    ["url_parameter", "https://api.example/items?api_key=0123456789abcdef", "0123456789abcdef"],
  ])("masks a %s in %s", (kind, text, secret) => {
    const out = redactSecrets(text);
    expect(out).not.toContain(secret);
    expect(out).toContain(`[REDACTED:${kind}]`);
  });

  it("still leaves prose and ordinary URLs alone", () => {
    for (const text of [
      "the token bucket refills; bearer tokens are checked by authenticate()",
      "https://example.com/search?q=hello%20world&page=2",
      "100% of the tests pass, 50%2 is not a key",
      "key_size=2048",
    ]) expect(redactSecrets(text)).toBe(text);
  });
});

describe("redactSecretsDeep on deep JSON", () => {
  it("copies JSON nested 100 000 levels deep without overflowing the stack", () => {
    let deep: unknown = { password: "p", note: github };
    for (let i = 0; i < 100_000; i++) deep = i % 2 ? [deep] : { child: deep };
    let out = redactSecretsDeep(deep) as any;
    for (let i = 99_999; i >= 0; i--) out = i % 2 ? out[0] : out.child;
    expect(out).toEqual({ password: "[REDACTED:sensitive_field]", note: "[REDACTED:github_token]" });
  });

  it("still turns cycles into undefined and keeps dates", () => {
    const a: Record<string, unknown> = { at: new Date(0), list: [] };
    (a.list as unknown[]).push(a);
    expect(redactSecretsDeep(a)).toEqual({ at: new Date(0), list: [undefined] });
  });
});

describe("redactResponses(): bodies of every shape, and secrets returned to their owner", () => {
  let url = "";
  let close: () => Promise<void>;
  beforeAll(async () => {
    const app = new Koa();
    app.use(errorHandler());
    app.use(redactResponses());
    const auth = new Router({ prefix: "/auth" });
    auth.post("/login", (ctx) => {
      ctx.body = { accessToken: `eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.${"s".repeat(43)}`, refreshToken: "rt_opaque_refresh_token_value", note: `leak ${github}` };
    });
    auth.post("/fail", (ctx) => {
      ctx.status = 400;
      ctx.body = { accessToken: `leak ${github}` };
    });
    app.use(ownerSecrets(auth.routes()));
    const api = new Router();
    api.get("/marked-by-route", (ctx) => {
      ctx.body = { key: fake("keen_abcdefghijkm_", 43, "abcDEF0123_-"), other: github };
      markOwnerSecrets(ctx, ["key"]);
    });
    api.get("/unmarked", (ctx) => {
      ctx.body = { accessToken: github };
    });
    api.get("/json-string", (ctx) => {
      ctx.type = "application/json";
      ctx.body = JSON.stringify({ password: "hunter2", text: github });
    });
    api.get("/ndjson", (ctx) => {
      ctx.type = "application/x-ndjson";
      ctx.body = Readable.from(['{"token":"opaque-1"}\n{"ok":', 'true,"secret":"opaque-2"}\n']);
    });
    api.get("/ndjson-buffer", (ctx) => {
      ctx.type = "application/x-ndjson";
      ctx.body = Buffer.from('{"apiKey":"opaque-3"}\n');
    });
    api.get("/sse-pem", (ctx) => {
      const stream = new PassThrough();
      ctx.type = "text/event-stream";
      ctx.body = stream;
      const lines = pem.split(/(?<=\n)/);
      let i = 0;
      const tick = () => {
        if (i < lines.length) {
          stream.write(lines[i++]);
          setImmediate(tick);
        } else stream.end("data: done\n\n");
      };
      tick();
    });
    api.get("/error", () => {
      throw new HttpError(400, "bad", `bad key ${anthropic}`, { echo: { deep: [`bearer ${"z".repeat(30)}`] } });
    });
    app.use(api.routes());
    const server = createServer(app.callback());
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    close = () => new Promise((resolve) => server.close(() => resolve()));
  });
  afterAll(() => close());

  it("passes the marked fields of a wrapped router and masks the rest", async () => {
    const res = (await (await fetch(`${url}/auth/login`, { method: "POST" })).json()) as any;
    expect(res.accessToken).toMatch(/^eyJ/);
    expect(res.refreshToken).toBe("rt_opaque_refresh_token_value");
    expect(res.note).toBe("leak [REDACTED:github_token]");
  });

  it("masks marked fields of an error response, and routes past the wrapped router", async () => {
    expect(await (await fetch(`${url}/auth/fail`, { method: "POST" })).json()).toEqual({ accessToken: "[REDACTED:sensitive_field]" });
    expect(await (await fetch(`${url}/unmarked`)).json()).toEqual({ accessToken: "[REDACTED:sensitive_field]" });
  });

  it("passes a field a route marked itself", async () => {
    const res = (await (await fetch(`${url}/marked-by-route`)).json()) as any;
    expect(res.key).toMatch(/^keen_abcdefghijkm_[A-Za-z0-9_-]{43}$/);
    expect(res.other).toBe("[REDACTED:github_token]");
  });

  it("masks sensitive keys in a JSON string body, NDJSON streams and NDJSON buffers", async () => {
    expect(await (await fetch(`${url}/json-string`)).json()).toEqual({ password: "[REDACTED:sensitive_field]", text: "[REDACTED:github_token]" });
    expect(await (await fetch(`${url}/ndjson`)).text()).toBe('{"token":"[REDACTED:sensitive_field]"}\n{"ok":true,"secret":"[REDACTED:sensitive_field]"}\n');
    expect(await (await fetch(`${url}/ndjson-buffer`)).text()).toBe('{"apiKey":"[REDACTED:sensitive_field]"}\n');
  });

  it("masks a PEM key streamed over SSE one line per write", async () => {
    const text = await (await fetch(`${url}/sse-pem`)).text();
    for (const line of keyLines) expect(text).not.toContain(line);
    expect(text).toBe("[REDACTED:private_key]\ndata: done\n\n");
  });

  it("masks error messages and nested details", async () => {
    const res = await fetch(`${url}/error`);
    expect(await res.json()).toEqual({ error: { code: "bad", message: "bad key [REDACTED:anthropic_key]", details: { echo: { deep: ["bearer [REDACTED:bearer_token]"] } } } });
  });
});
