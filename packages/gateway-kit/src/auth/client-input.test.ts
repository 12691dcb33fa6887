import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import Koa from "koa";
import { afterAll, beforeAll, expect, it } from "vitest";
import { errorHandler } from "../http-error.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { authRouter } from "./auth-router.js";
import { createAuthService } from "./auth-service.js";
import { JwtKeySet } from "./jwt.js";
import { createKyselyAuthStores } from "./kysely-stores.js";
import { migrateForTests, PASSWORD, signup, startTestApp, type TestApp } from "./test-app.js";

const NUL = "a\u0000b";

describeEachDatabase("auth routes and hostile client input", (fixture) => {
  let app: TestApp;
  beforeAll(async () => {
    await migrateForTests(fixture);
    app = await startTestApp(fixture);
  });
  afterAll(() => app?.close());

  it("answers NUL bytes and unpaired surrogates in names, ids and codes with 400, never 500", async () => {
    const user = await signup(app);
    const token = user.accessToken;
    const cases: Array<[string, string, unknown]> = [
      ["POST", "/auth/signup", { email: "nul-name@example.com", password: "long enough password", displayName: NUL }],
      ["POST", "/auth/signup", { email: "lone-surrogate@example.com", password: "long enough password", displayName: "x\ud800y" }],
      ["POST", "/auth/signup", { email: "escape@example.com", password: "long enough password", displayName: "\u001b[31mred" }],
      ["POST", "/auth/signup", { email: "bidi@example.com", password: "long enough password", displayName: "evil\u202etxt.exe" }],
      ["POST", "/auth/api-keys", { name: NUL, scopes: ["sessions:read"] }],
      ["POST", "/auth/mfa/totp/verify", { factorId: NUL, code: "123456" }],
      ["POST", "/auth/mfa/sms/verify", { factorId: NUL, code: "123456" }],
      ["POST", "/auth/mfa/totp", { label: NUL }],
      ["DELETE", "/auth/sessions/%00", undefined],
      ["DELETE", "/auth/api-keys/%00", undefined],
      ["DELETE", "/auth/mfa/factors/%00", { password: "whatever" }],
      ["POST", "/auth/login", { email: "someone@example.com", password: NUL }],
      ["POST", "/auth/login", { email: "someone@example.com", password: "whatever", teamId: NUL }],
      ["POST", "/auth/login/mfa/sms", { challengeToken: "x", factorId: NUL }],
      ["POST", "/auth/password", { currentPassword: NUL, newPassword: "another long password" }],
    ];
    for (const [method, path, body] of cases) {
      const res = await app.request(method, path, { token, ...(body === undefined ? {} : { body }) });
      expect(res.status, `${method} ${path} ${JSON.stringify(body)}`).toBe(400);
      expect(res.body.error.code).toBe("invalid_request");
    }
  });

  it("gives every auth route a 4xx for NUL in every field, path id and query, signed in or not", async () => {
    const user = await signup(app);
    const everyField = Object.fromEntries(
      ["email", "password", "displayName", "teamId", "challengeToken", "method", "code", "factorId", "refreshToken", "currentPassword", "newPassword", "name", "label", "phone", "response", "state"].map((k) => [k, NUL]),
    );
    const routes = authRouter({ service: app.service }).stack.filter((layer) => layer.methods.length > 0);
    expect(routes.length).toBeGreaterThan(20);
    let tried = 0;
    for (const layer of routes) {
      const path = String(layer.path).replace(/:[a-z]+/gi, "%00") + "?code=%00&state=%00&mode=%00";
      for (const method of layer.methods.filter((m) => m !== "HEAD")) {
        for (const token of [undefined, user.accessToken]) {
          const res = await app.request(method, path, { ...(token ? { token } : {}), ...(method === "GET" ? {} : { body: everyField }) });
          expect(res.status, `${method} ${path}`).toBeLessThan(500);
          tried += 1;
        }
      }
    }
    expect(tried).toBeGreaterThan(40);
  });

  it("answers deeply nested, oversized and mistyped bodies with 4xx", async () => {
    const nested = `{"email":${"[".repeat(20_000)}${"]".repeat(20_000)},"password":"x"}`;
    const deep = await app.request("POST", "/auth/login", { rawBody: nested, headers: { "content-type": "application/json" } });
    expect(deep.status).toBe(400);
    const huge = await app.request("POST", "/auth/signup", { rawBody: JSON.stringify({ email: "big@example.com", password: "p".repeat(200_000) }), headers: { "content-type": "application/json" } });
    expect(huge.status).toBe(413);
    const text = await app.request("POST", "/auth/login", { rawBody: "email=a@example.com", headers: { "content-type": "text/plain" } });
    expect(text.status).toBe(400);
    for (const expiresAt of ["NaN", "-1", "275760-09-13T00:00:00.001Z", 1e308]) {
      const user = await signup(app);
      const res = await app.request("POST", "/auth/api-keys", { token: user.accessToken, body: { name: "ci", scopes: ["sessions:read"], expiresAt, password: PASSWORD } });
      expect(res.status, String(expiresAt)).toBe(400);
    }
  });

  it("marks every token response Cache-Control: no-store", async () => {
    const user = await signup(app);
    const login = await app.request("POST", "/auth/login", { body: { email: user.email, password: "correct horse battery" } });
    const refresh = await app.request("POST", "/auth/token/refresh", { body: { refreshToken: login.body.refreshToken } });
    const key = await app.request("POST", "/auth/api-keys", { token: user.accessToken, body: { name: "ci", scopes: ["sessions:read"], password: PASSWORD } });
    const signupRes = await app.request("POST", "/auth/signup", { body: { email: `cache-${Date.now()}@example.com`, password: "long enough password" } });
    for (const res of [login, refresh, key, signupRes]) {
      expect(res.status).toBeLessThan(300);
      expect(res.headers.get("cache-control")).toBe("no-store");
      expect(res.headers.get("pragma")).toBe("no-cache");
    }
    const jwks = await app.request("GET", "/auth/.well-known/jwks.json");
    expect(jwks.headers.get("cache-control")).toBe("public, max-age=300");
  });

  it("lets an unexpected error reach the host's error handler and logger instead of swallowing it", async () => {
    const stores = createKyselyAuthStores(fixture.database.db);
    const failure = new Error("database went away");
    const broken = { ...stores, users: { ...stores.users, findByEmail: async () => Promise.reject(failure) } };
    const service = createAuthService({ stores: broken, keys: await JwtKeySet.generate(), issuer: "https://keen.test", audience: "keen-api", passwordHashing: { memoryCost: 1024, timeCost: 1 } });
    const logged: unknown[] = [];
    const koa = new Koa();
    koa.use(errorHandler({ onUnexpected: (error) => logged.push(error) }));
    const router = authRouter({ service });
    koa.use(router.routes()).use(router.allowedMethods());
    const server = createServer(koa.callback());
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const res = await fetch(`${base}/auth/login`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ email: "a@example.com", password: "whatever" }) });
      expect(res.status).toBe(500);
      expect(await res.json()).toEqual({ error: { code: "internal_error", message: "Internal server error" } });
      expect(logged).toEqual([failure]);
      // Client errors are still answered by the router itself, in the one JSON shape.
      const bad = await fetch(`${base}/auth/login`, { method: "POST", headers: { "content-type": "application/json" }, body: "{" });
      expect(bad.status).toBe(400);
      expect(((await bad.json()) as { error: { code: string } }).error.code).toBeTruthy();
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
