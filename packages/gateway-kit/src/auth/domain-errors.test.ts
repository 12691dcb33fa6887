// The auth service called as a job worker would: no Koa, no request. Every refusal is a coded
// domain error (never an HttpError, never a status), and the edge's table knows its status.
import { afterAll, beforeAll, expect, it } from "vitest";
import { AuthError, ConfigError } from "../errors.js";
import { errorStatus, errorStatuses, HttpError } from "../http-error.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { createAuthService, type AuthService } from "./auth-service.js";
import { createAccessTokens, JwtKeySet } from "./jwt.js";
import { createKyselyAuthStores } from "./kysely-stores.js";
import { migrateForTests, PASSWORD, uniqueEmail } from "./test-app.js";

async function refusal(promise: Promise<unknown>, code: string, status: number): Promise<AuthError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(AuthError);
  expect(error).not.toBeInstanceOf(HttpError);
  expect(error).not.toHaveProperty("status");
  expect((error as AuthError).code).toBe(code);
  expect(Object.hasOwn(errorStatuses, code)).toBe(true);
  expect(errorStatus(error)).toBe(status);
  return error as AuthError;
}

describeEachDatabase("auth service errors outside any request", (fixture) => {
  let service: AuthService;
  let keys: JwtKeySet;
  beforeAll(async () => {
    await migrateForTests(fixture);
    keys = await JwtKeySet.generate({ algorithm: "EdDSA" });
    service = createAuthService({
      stores: createKyselyAuthStores(fixture.database.db),
      keys,
      issuer: "https://keen.test",
      audience: "keen-api",
      passwordHashing: { memoryCost: 1024, timeCost: 1 },
    });
  });
  afterAll(() => undefined);

  it("refuses sign-in, tokens and keys with coded AuthErrors", async () => {
    const email = uniqueEmail("domain");
    const user = await service.signup({ email, password: PASSWORD });
    await refusal(service.signup({ email, password: PASSWORD }), "email_taken", 409);
    await refusal(service.login({ email, password: "wrong password!" }), "invalid_credentials", 401);
    await refusal(service.login({ email, password: PASSWORD, teamId: "someone-elses-team" }), "not_a_member", 403);
    await refusal(service.refresh("rt_not-a-token"), "invalid_refresh_token", 401);
    await refusal(service.verifyApiKey("keen_garbage"), "invalid_api_key", 401);
    await refusal(service.verifyAccessToken("not.a.jwt"), "invalid_token", 401);
    const principal = await service.verifyAccessToken(user.accessToken);
    await refusal(service.changePassword(principal, { currentPassword: "wrong password!", newPassword: "another good one" }), "invalid_password", 403);
    await refusal(service.setMemberRole(user.teamId!, user.user.id, "admin"), "last_owner", 409);
    await refusal(service.createApiKey(principal, { name: "k", scopes: ["nope:nothing"] }), "forbidden", 403);
    await refusal(service.confirmTotp(principal, "no-such-factor", "123456"), "not_found", 404);
    const { factorId } = await service.enrolTotp(principal, undefined, { password: PASSWORD });
    await refusal(service.confirmTotp(principal, factorId, "000000"), "invalid_enrolment_code", 400);
    await refusal(service.completeMfaLogin({ challengeToken: "mfa_nothing", method: "totp", code: "123456" }), "invalid_challenge", 401);
    await refusal(service.oauthStart("github"), "not_found", 404);
    await refusal(service.enrolSms(principal, "+447700900123", { password: PASSWORD }), "not_found", 404);
    await refusal(service.enrolTotp(principal), "reauthentication_required", 401);
    await refusal(service.regenerateRecoveryCodes(principal, PASSWORD), "mfa_not_enrolled", 400);
  });

  it("refuses a token from other keys and an expired one with codes the edge turns into a challenge", async () => {
    const other = createAccessTokens({ keys: await JwtKeySet.generate({ algorithm: "EdDSA" }), issuer: "https://keen.test", audience: "keen-api" });
    const { token } = await other.sign({ userId: "u", sessionId: "s" });
    await refusal(service.verifyAccessToken(token), "invalid_token", 401);
  });

  it("locks out with a coded error that carries when to retry", async () => {
    const email = uniqueEmail("locked");
    await service.signup({ email, password: PASSWORD });
    let locked: AuthError | undefined;
    for (let i = 0; i < 30 && !locked; i++) {
      const error = await service.login({ email, password: `wrong ${i}` }, { ip: "203.0.113.9" }).catch((e: unknown) => e);
      if ((error as AuthError).code === "too_many_attempts") locked = error as AuthError;
    }
    expect(locked).toBeInstanceOf(AuthError);
    expect(locked!.retryAfterSeconds).toBeGreaterThan(0);
    expect(errorStatus(locked)).toBe(429);
  });

  it("refuses bad options with a ConfigError", () => {
    expect(() => createAuthService({ stores: {} as never, keys, issuer: "", audience: "a" })).toThrow(ConfigError);
  });
});
