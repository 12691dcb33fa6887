// Runs the documented recipe with the real auth router and service on a real database.
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Router } from "@koa/router";
import Koa from "koa";
import { afterAll, beforeAll, expect, it } from "vitest";
import { authRouter } from "../../auth/auth-router.js";
import { migrateForTests, PASSWORD, startTestApp, uniqueEmail, type TestApp } from "../../auth/test-app.js";
import { errorHandler } from "../../http-error.js";
import { describeEachDatabase } from "../../testing/each-database.js";
import { redactResponses } from "../redact.js";
import { createRedactedApp } from "./app-wide-redaction.js";

const leaked = `ghp_${"Ab1".repeat(12)}`;

async function listen(app: Koa): Promise<{ url: string; close: () => Promise<void> }> {
  const server = createServer(app.callback());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

describeEachDatabase("recipe: app-wide redaction with auth", (fixture) => {
  let auth: TestApp;
  let app: { url: string; close: () => Promise<void> };
  let naive: { url: string; close: () => Promise<void> };

  beforeAll(async () => {
    await migrateForTests(fixture);
    auth = await startTestApp(fixture);
    const api = new Router();
    api.get("/runs/:id/output", (ctx) => {
      ctx.body = { output: `found ${leaked} in the logs`, accessToken: "a tool echoed a token field" };
    });
    app = await listen(createRedactedApp({ service: auth.service, api }));
    // The order the docs used to show: redaction app-wide, the auth router unwrapped.
    const plain = new Koa();
    plain.use(errorHandler());
    plain.use(redactResponses());
    plain.use(authRouter({ service: auth.service, prefix: "/auth" }).routes());
    naive = await listen(plain);
  });
  afterAll(async () => {
    await app?.close();
    await naive?.close();
    await auth?.close();
  });

  const call = async (base: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) => {
    const res = await fetch(base + path, { method, headers: { "content-type": "application/json", ...headers }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
    return { status: res.status, body: (await res.json()) as any };
  };

  it("without the wrapper, redaction eats the tokens the client needs", async () => {
    const res = await call(naive.url, "POST", "/auth/signup", { email: uniqueEmail(), password: PASSWORD });
    expect(res.status).toBe(201);
    expect(res.body.accessToken).toMatch(/REDACTED/);
  });

  it("hands out working login and refresh tokens and API keys, and masks everything else", async () => {
    const email = uniqueEmail();
    const signup = await call(app.url, "POST", "/auth/signup", { email, password: PASSWORD });
    expect(signup.status).toBe(201);
    expect(signup.body.refreshToken).toMatch(/^rt_/);

    const login = await call(app.url, "POST", "/auth/login", { email, password: PASSWORD });
    expect(login.status).toBe(200);
    const me = await call(app.url, "GET", "/auth/me", undefined, { authorization: `Bearer ${login.body.accessToken}` });
    expect(me.status).toBe(200);

    const refreshed = await call(app.url, "POST", "/auth/token/refresh", { refreshToken: login.body.refreshToken });
    expect(refreshed.status).toBe(200);
    expect(refreshed.body.accessToken).toMatch(/^eyJ/);

    const created = await call(app.url, "POST", "/auth/api-keys", { name: "ci", scopes: ["sessions:write"], password: PASSWORD }, { authorization: `Bearer ${refreshed.body.accessToken}` });
    expect(created.status).toBe(201);
    expect(created.body.key).toMatch(/^keen_[a-z2-7]{12}_[A-Za-z0-9_-]{43}$/);

    // The new key works on the API, whose own output is masked, token-named fields included.
    const output = await call(app.url, "GET", "/runs/r1/output", undefined, { "x-api-key": created.body.key });
    expect(output).toEqual({ status: 200, body: { output: "found [REDACTED:github_token] in the logs", accessToken: "[REDACTED:sensitive_field]" } });

    // A listing of keys is not a secret handed out: nothing secret is in it, and nothing is let through.
    const listed = await call(app.url, "GET", "/auth/api-keys", undefined, { authorization: `Bearer ${refreshed.body.accessToken}` });
    expect(JSON.stringify(listed.body)).not.toContain(created.body.key);
  });
});
