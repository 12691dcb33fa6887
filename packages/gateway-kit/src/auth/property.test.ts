import fc from "fast-check";
import { afterAll, beforeAll, expect, it } from "vitest";
import { describeEachDatabase } from "../testing/each-database.js";
import { migrateForTests, signup, startTestApp, type TestApp } from "./test-app.js";

const printable = (max: number) => fc.string({ unit: "grapheme-ascii", maxLength: max }).filter((s) => /^[\x20-\x7e]*$/.test(s));

const endpoints: Array<[string, string]> = [
  ["POST", "/auth/signup"],
  ["POST", "/auth/login"],
  ["POST", "/auth/login/mfa"],
  ["POST", "/auth/login/mfa/webauthn/options"],
  ["POST", "/auth/login/mfa/sms"],
  ["POST", "/auth/token/refresh"],
  ["POST", "/auth/logout"],
  ["GET", "/auth/me"],
  ["POST", "/auth/password"],
  ["GET", "/auth/sessions"],
  ["DELETE", "/auth/sessions/x"],
  ["POST", "/auth/api-keys"],
  ["DELETE", "/auth/api-keys/x"],
  ["POST", "/auth/mfa/totp"],
  ["POST", "/auth/mfa/totp/verify"],
  ["POST", "/auth/mfa/sms"],
  ["POST", "/auth/mfa/webauthn/register/options"],
  ["POST", "/auth/mfa/webauthn/register/verify"],
  ["DELETE", "/auth/mfa/factors/x"],
  ["POST", "/auth/mfa/recovery-codes"],
  ["GET", "/auth/oauth/github/callback?code=a&state=b"],
  ["GET", "/v1/sessions"],
  ["POST", "/v1/sessions"],
];

describeEachDatabase("auth endpoints under random input", (fixture) => {
  let app: TestApp;
  let validToken = "";
  beforeAll(async () => {
    await migrateForTests(fixture);
    app = await startTestApp(fixture, { loginLimiter: { accountFailures: 1000, ipFailures: 100_000 } });
    validToken = (await signup(app)).accessToken;
  });
  afterAll(() => app?.close());

  const field = fc.oneof(
    fc.jsonValue(),
    printable(40),
    fc.constantFrom("totp", "recovery_code", "sms", "webauthn", "a@b.co", "rt_x", "mfa_x", "+447700900123", "123456"),
  );
  const keys = fc.constantFrom("email", "password", "refreshToken", "challengeToken", "method", "code", "response", "factorId", "scopes", "name", "phone", "currentPassword", "newPassword", "expiresAt", "teamId", "__proto__", "constructor");
  const body = fc.oneof(
    fc.dictionary(keys, field, { maxKeys: 6 }).map((o) => ({ raw: JSON.stringify(o), type: "application/json" })),
    fc.jsonValue().map((v) => ({ raw: JSON.stringify(v), type: "application/json" })),
    printable(200).map((s) => ({ raw: s, type: "application/json" })),
    printable(200).map((s) => ({ raw: s, type: "text/plain" })),
    fc.constant(undefined),
  );
  const authorization = fc.oneof(
    fc.constant(undefined),
    fc.constant("valid"),
    printable(80).map((s) => `Bearer ${s}`),
    printable(60).map((s) => `Bearer keen_${s}`),
    printable(80),
  );

  it("answers every request with a status below 500 and the one error shape", async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...endpoints), body, authorization, async ([method, path], payload, auth) => {
        const headers: Record<string, string> = {};
        if (auth) headers.authorization = auth === "valid" ? `Bearer ${validToken}` : auth;
        if (payload) headers["content-type"] = payload.type;
        const res = await app.request(method, path, { headers, ...(payload && method !== "GET" ? { rawBody: payload.raw } : {}) });
        expect(res.status, `${method} ${path} ${JSON.stringify(payload)} ${auth}`).toBeLessThan(500);
        if (res.status >= 400) {
          expect(res.body.error.code).toEqual(expect.any(String));
          expect(res.body.error.message).toEqual(expect.any(String));
        }
      }),
      { numRuns: 150 },
    );
  });
});
