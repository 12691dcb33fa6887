import { createHmac } from "node:crypto";
import { exportSPKI, SignJWT, generateKeyPair, type CryptoKey } from "jose";
import { describe, expect, it } from "vitest";
import { AuthError, ConfigError } from "../errors.js";
import { errorHeaders, errorStatus } from "../http-error.js";
import { createAccessTokens, JwtKeySet } from "./jwt.js";
import { TestClock } from "../testing/index.js";

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");

async function rejection(promise: Promise<unknown>): Promise<AuthError & { status: number }> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  // A domain error, not an HTTP one: the status is the edge's decision.
  expect(error).toBeInstanceOf(AuthError);
  expect(error).not.toHaveProperty("status");
  return Object.assign(error as AuthError, { status: errorStatus(error) });
}

describe("access tokens", () => {
  const setup = async (algorithm: "EdDSA" | "ES256" | "RS256" = "EdDSA") => {
    const clock = new TestClock(1_700_000_000_000);
    const keys = await JwtKeySet.generate({ algorithm, now: clock.now });
    const tokens = createAccessTokens({ keys, issuer: "https://keen.test", audience: "keen-api", now: clock.now });
    const claims = () => {
      const iat = Math.floor(clock.ms / 1000);
      return { sub: "user-1", sid: "session-1", iss: "https://keen.test", aud: "keen-api", iat, nbf: iat, exp: iat + 900 };
    };
    return { clock, keys, tokens, claims };
  };

  it("round-trips claims and pins typ, iss, aud", async () => {
    const { tokens } = await setup();
    const { token } = await tokens.sign({ userId: "u", sessionId: "s", teamId: "t" });
    const header = JSON.parse(Buffer.from(token.split(".")[0]!, "base64url").toString());
    expect(header).toMatchObject({ alg: "EdDSA", typ: "at+jwt" });
    expect(await tokens.verify(token)).toEqual({ userId: "u", sessionId: "s", teamId: "t" });
  });

  it("rejects alg none", async () => {
    const { tokens, keys, claims } = await setup();
    const token = `${b64({ alg: "none", typ: "at+jwt", kid: keys.currentKid })}.${b64(claims())}.`;
    const error = await rejection(tokens.verify(token));
    expect(error.status).toBe(401);
    expect(error.code).toBe("invalid_token");
  });

  it("rejects HS256 signed with the RSA public key as secret (algorithm confusion)", async () => {
    const { tokens, keys, claims } = await setup("RS256");
    const publicJwk = keys.jwks().keys[0]!;
    const { importJWK } = await import("jose");
    const pem = await exportSPKI((await importJWK(publicJwk, "RS256")) as CryptoKey);
    const signingInput = `${b64({ alg: "HS256", typ: "at+jwt", kid: keys.currentKid })}.${b64(claims())}`;
    const signature = createHmac("sha256", pem).update(signingInput).digest("base64url");
    const error = await rejection(tokens.verify(`${signingInput}.${signature}`));
    expect(error.code).toBe("invalid_token");
    expect(error.details).toEqual({ reason: "algorithm_not_allowed" });
  });

  it("rejects a token signed by a foreign key with the same kid", async () => {
    const { tokens, keys } = await setup("ES256");
    const foreign = await generateKeyPair("ES256");
    const token = await new SignJWT({ sid: "s" })
      .setProtectedHeader({ alg: "ES256", typ: "at+jwt", kid: keys.currentKid })
      .setSubject("u")
      .setIssuer("https://keen.test")
      .setAudience("keen-api")
      .setIssuedAt()
      .setNotBefore("0s")
      .setExpirationTime("5m")
      .sign(foreign.privateKey);
    expect((await rejection(tokens.verify(token))).details).toEqual({ reason: "bad_signature" });
  });

  it("rejects wrong audience, wrong issuer, wrong typ, tampered payload and expiry", async () => {
    const { tokens, keys, clock } = await setup();
    const other = createAccessTokens({ keys, issuer: "https://keen.test", audience: "someone-else", now: clock.now });
    const wrongAud = (await other.sign({ userId: "u", sessionId: "s" })).token;
    expect((await rejection(tokens.verify(wrongAud))).details).toEqual({ reason: "bad_claim_aud" });

    const otherIss = createAccessTokens({ keys, issuer: "https://evil.test", audience: "keen-api", now: clock.now });
    expect((await rejection(tokens.verify((await otherIss.sign({ userId: "u", sessionId: "s" })).token))).details).toEqual({ reason: "bad_claim_iss" });

    const { key, kid } = keys.signingKey();
    const idToken = await new SignJWT({ sid: "s" })
      .setProtectedHeader({ alg: "EdDSA", typ: "JWT", kid })
      .setSubject("u")
      .setIssuer("https://keen.test")
      .setAudience("keen-api")
      .setIssuedAt(Math.floor(clock.ms / 1000))
      .setNotBefore(Math.floor(clock.ms / 1000))
      .setExpirationTime(Math.floor(clock.ms / 1000) + 60)
      .sign(key);
    expect((await rejection(tokens.verify(idToken))).details).toEqual({ reason: "bad_claim_typ" });

    const good = (await tokens.sign({ userId: "u", sessionId: "s" })).token;
    const [h, p, s] = good.split(".");
    const payload = JSON.parse(Buffer.from(p!, "base64url").toString());
    const tampered = `${h}.${b64({ ...payload, sub: "admin" })}.${s}`;
    expect((await rejection(tokens.verify(tampered))).details).toEqual({ reason: "bad_signature" });

    clock.advance(901_000 + 5_000);
    const expired = await rejection(tokens.verify(good));
    expect(expired.code).toBe("token_expired");
    expect(expired.status).toBe(401);
    expect(errorHeaders(expired)["WWW-Authenticate"]).toBe('Bearer error="invalid_token", error_description="expired"');
  });

  it("rejects a token that is not yet valid", async () => {
    const { tokens, clock } = await setup();
    clock.advance(60_000);
    const future = (await tokens.sign({ userId: "u", sessionId: "s" })).token;
    clock.advance(-60_000);
    expect((await rejection(tokens.verify(future))).details).toEqual({ reason: "bad_claim_nbf" });
  });

  it("keeps verifying tokens of a rotated key until it retires, then refuses them", async () => {
    const { tokens, keys, clock } = await setup();
    const old = (await tokens.sign({ userId: "u", sessionId: "s" })).token;
    const oldKid = keys.currentKid;
    await keys.rotate({ retireAfterSeconds: 900 });
    expect(keys.currentKid).not.toBe(oldKid);
    const fresh = (await tokens.sign({ userId: "u", sessionId: "s" })).token;
    expect(JSON.parse(Buffer.from(fresh.split(".")[0]!, "base64url").toString()).kid).toBe(keys.currentKid);
    expect(await tokens.verify(old)).toMatchObject({ userId: "u" });
    expect(keys.jwks().keys.map((k) => k.kid).sort()).toEqual([oldKid, keys.currentKid].sort());
    clock.advance(900_000);
    expect(keys.jwks().keys.map((k) => k.kid)).toEqual([keys.currentKid]);
    expect((await rejection(tokens.verify(old))).details).toEqual({ reason: "unknown_key" });
    expect(await tokens.verify(fresh)).toMatchObject({ userId: "u" });
  });

  it("restores a key set from JWKs and validates options at creation", async () => {
    const { keys, tokens, clock } = await setup("ES256");
    const pair = await generateKeyPair("ES256", { extractable: true });
    const { exportJWK } = await import("jose");
    const signing = { ...(await exportJWK(pair.privateKey)), kid: "k2" };
    const restored = await JwtKeySet.fromJwks({ algorithm: "ES256", signing, verifying: [{ jwk: keys.jwks().keys[0]! }], now: clock.now });
    const restoredTokens = createAccessTokens({ keys: restored, issuer: "https://keen.test", audience: "keen-api", now: clock.now });
    const old = (await tokens.sign({ userId: "u", sessionId: "s" })).token;
    expect(await restoredTokens.verify(old)).toMatchObject({ userId: "u" });
    await expect(JwtKeySet.generate({ algorithm: "HS256" as never })).rejects.toThrow(ConfigError);
    expect(() => createAccessTokens({ keys, issuer: "", audience: "a" })).toThrow(ConfigError);
    expect(() => createAccessTokens({ keys: {} as never, issuer: "i", audience: "a" })).toThrow(ConfigError);
  });
});
