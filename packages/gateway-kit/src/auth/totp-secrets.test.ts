import { randomBytes } from "node:crypto";
import { beforeAll, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { createAuthService, type AuthService } from "./auth-service.js";
import { JwtKeySet } from "./jwt.js";
import { createKyselyAuthStores } from "./kysely-stores.js";
import { TestClock } from "../testing/index.js";
import { migrateForTests, PASSWORD, uniqueEmail } from "./test-app.js";
import { totpCode } from "./totp.js";
import { createTotpSecretBox, type TotpEncryptionOptions } from "./totp-secrets.js";

const k1 = randomBytes(32).toString("base64");
const k2 = randomBytes(32);

describeEachDatabase("TOTP secrets at rest", (fixture) => {
  let keys: JwtKeySet;
  const clock = new TestClock();
  beforeAll(async () => {
    await migrateForTests(fixture);
    keys = await JwtKeySet.generate({ algorithm: "EdDSA" });
  });

  const service = (totpEncryption?: TotpEncryptionOptions): AuthService =>
    createAuthService({
      stores: createKyselyAuthStores(fixture.database.db),
      keys,
      issuer: "https://keen.test",
      audience: "keen-api",
      passwordHashing: { memoryCost: 1024, timeCost: 1 },
      now: clock.now,
      ...(totpEncryption ? { totpEncryption } : {}),
    });

  const row = (factorId: string) =>
    fixture.database.db.selectFrom("mfa_factors").select(["secret", "secret_key_id"]).where("id", "=", factorId).executeTakeFirstOrThrow();

  async function enrolled(auth: AuthService) {
    const email = uniqueEmail("totp");
    const user = await auth.signup({ email, password: PASSWORD });
    const principal = await auth.verifyAccessToken(user.accessToken);
    const { factorId, secret } = await auth.enrolTotp(principal, undefined, { password: PASSWORD });
    await auth.confirmTotp(principal, factorId, totpCode(secret, clock.now()));
    return { email, factorId, secret };
  }

  async function signInWithTotp(auth: AuthService, email: string, secret: string) {
    clock.advance(31_000); // a fresh step: an accepted step is never accepted twice
    const first = await auth.login({ email, password: PASSWORD });
    if (first.status !== "mfa_required") throw new Error("expected a second factor");
    return auth.completeMfaLogin({ challengeToken: first.challengeToken, method: "totp", code: totpCode(secret, clock.now()) });
  }

  it("stores a new secret sealed with the current key, bound to its factor, and signs in with it", async () => {
    const auth = service({ currentKeyId: "k1", keys: { k1 } });
    const { email, factorId, secret } = await enrolled(auth);
    const stored = await row(factorId);
    expect(stored.secret_key_id).toBe("k1");
    expect(stored.secret).not.toContain(secret);
    expect(Buffer.from(stored.secret!, "base64").length).toBeGreaterThan(28);
    expect((await signInWithTotp(auth, email, secret)).accessToken).toEqual(expect.any(String));
    // Without the key the row cannot be read: a misconfiguration, not a wrong code.
    await expect(signInWithTotp(service(), email, secret)).rejects.toBeInstanceOf(ConfigError);
  });

  it("reads a plain row written before encryption and re-seals it on its next use", async () => {
    const { email, factorId, secret } = await enrolled(service());
    expect(await row(factorId)).toEqual({ secret, secret_key_id: null });
    await signInWithTotp(service({ currentKeyId: "k1", keys: { k1 } }), email, secret);
    const resealed = await row(factorId);
    expect(resealed.secret_key_id).toBe("k1");
    expect(resealed.secret).not.toBe(secret);
  });

  it("rotates: a secret sealed with a retired key still opens and moves to the current key", async () => {
    const { email, factorId, secret } = await enrolled(service({ currentKeyId: "k1", keys: { k1 } }));
    await signInWithTotp(service({ currentKeyId: "k2", keys: { k1, k2 } }), email, secret);
    expect((await row(factorId)).secret_key_id).toBe("k2");
    // k1 can now be dropped.
    expect((await signInWithTotp(service({ currentKeyId: "k2", keys: { k2 } }), email, secret)).accessToken).toEqual(expect.any(String));
  });

  it("refuses a sealed secret copied onto another factor's row", async () => {
    const auth = service({ currentKeyId: "k1", keys: { k1 } });
    const victim = await enrolled(auth);
    const attacker = await enrolled(auth);
    const sealed = await row(victim.factorId);
    await fixture.database.db.updateTable("mfa_factors").set({ secret: sealed.secret }).where("id", "=", attacker.factorId).execute();
    await expect(signInWithTotp(auth, attacker.email, victim.secret)).rejects.toBeInstanceOf(ConfigError);
  });

  it("checks keys when the service is created", () => {
    expect(() => createTotpSecretBox({ currentKeyId: "k1", keys: { k1: randomBytes(16) } })).toThrow(ConfigError);
    expect(() => createTotpSecretBox({ currentKeyId: "k3", keys: { k1 } })).toThrow(ConfigError);
    expect(() => service({ currentKeyId: "bad id!", keys: { k1 } })).toThrow(ConfigError);
  });
});
