import { createHash, generateKeyPairSync, randomBytes, sign, type KeyObject } from "node:crypto";
import { afterAll, beforeAll, expect, it } from "vitest";
import { describeEachDatabase } from "../testing/each-database.js";
import { migrateForTests, PASSWORD, signup, startTestApp, type TestApp } from "./test-app.js";

// A tiny CBOR encoder: enough for attestation objects and COSE keys.
type Cbor = number | string | Uint8Array | Cbor[] | Map<Cbor, Cbor>;
function head(major: number, n: number): Buffer {
  if (n < 24) return Buffer.from([(major << 5) | n]);
  if (n < 256) return Buffer.from([(major << 5) | 24, n]);
  if (n < 65536) {
    const b = Buffer.alloc(3);
    b[0] = (major << 5) | 25;
    b.writeUInt16BE(n, 1);
    return b;
  }
  const b = Buffer.alloc(5);
  b[0] = (major << 5) | 26;
  b.writeUInt32BE(n, 1);
  return b;
}
function cbor(value: Cbor): Buffer {
  if (typeof value === "number") return value >= 0 ? head(0, value) : head(1, -1 - value);
  if (typeof value === "string") {
    const bytes = Buffer.from(value, "utf8");
    return Buffer.concat([head(3, bytes.length), bytes]);
  }
  if (value instanceof Uint8Array) return Buffer.concat([head(2, value.length), Buffer.from(value)]);
  if (Array.isArray(value)) return Buffer.concat([head(4, value.length), ...value.map(cbor)]);
  const parts: Buffer[] = [head(5, value.size)];
  for (const [k, v] of value) parts.push(cbor(k), cbor(v));
  return Buffer.concat(parts);
}

const ORIGIN = "http://localhost:5173";
const RP_ID = "localhost";
const b64url = (b: Uint8Array | string) => Buffer.from(b).toString("base64url");
const sha256 = (b: Uint8Array | string) => createHash("sha256").update(b).digest();

/** A software security key: an ES256 key pair and a signature counter. */
class SoftwareAuthenticator {
  readonly credentialId = randomBytes(32);
  private readonly privateKey: KeyObject;
  private readonly publicKey: KeyObject;
  counter = 0;
  constructor() {
    const pair = generateKeyPairSync("ec", { namedCurve: "P-256" });
    this.privateKey = pair.privateKey;
    this.publicKey = pair.publicKey;
  }

  register(challenge: string, origin = ORIGIN) {
    const jwk = this.publicKey.export({ format: "jwk" });
    const coseKey = new Map<Cbor, Cbor>([
      [1, 2],
      [3, -7],
      [-1, 1],
      [-2, Buffer.from(jwk.x!, "base64url")],
      [-3, Buffer.from(jwk.y!, "base64url")],
    ]);
    const idLength = Buffer.alloc(2);
    idLength.writeUInt16BE(this.credentialId.length);
    const authData = Buffer.concat([sha256(RP_ID), Buffer.from([0x41]), Buffer.alloc(4), Buffer.alloc(16), idLength, this.credentialId, cbor(coseKey)]);
    const clientDataJSON = JSON.stringify({ type: "webauthn.create", challenge, origin, crossOrigin: false });
    const attestationObject = cbor(new Map<Cbor, Cbor>([["fmt", "none"], ["attStmt", new Map()], ["authData", authData]]));
    return {
      id: b64url(this.credentialId),
      rawId: b64url(this.credentialId),
      type: "public-key",
      response: { clientDataJSON: b64url(clientDataJSON), attestationObject: b64url(attestationObject), transports: ["usb"] },
      clientExtensionResults: {},
    };
  }

  assert(challenge: string, counter = ++this.counter) {
    const count = Buffer.alloc(4);
    count.writeUInt32BE(counter);
    const authenticatorData = Buffer.concat([sha256(RP_ID), Buffer.from([0x01]), count]);
    const clientDataJSON = JSON.stringify({ type: "webauthn.get", challenge, origin: ORIGIN, crossOrigin: false });
    const signature = sign("sha256", Buffer.concat([authenticatorData, sha256(clientDataJSON)]), this.privateKey);
    return {
      id: b64url(this.credentialId),
      rawId: b64url(this.credentialId),
      type: "public-key",
      response: { clientDataJSON: b64url(clientDataJSON), authenticatorData: b64url(authenticatorData), signature: b64url(signature) },
      clientExtensionResults: {},
    };
  }
}

describeEachDatabase("WebAuthn", (fixture) => {
  let app: TestApp;
  beforeAll(async () => {
    await migrateForTests(fixture);
    app = await startTestApp(fixture);
  });
  afterAll(() => app?.close());

  it("registers a security key and uses it as the second login step; replays are refused", async () => {
    const user = await signup(app);
    const key = new SoftwareAuthenticator();
    const options = await app.request("POST", "/auth/mfa/webauthn/register/options", { token: user.accessToken, body: { password: PASSWORD } });
    expect(options.status).toBe(200);
    expect(options.body).toMatchObject({ rp: { id: RP_ID }, attestation: "none" });

    const wrongOrigin = await app.request("POST", "/auth/mfa/webauthn/register/verify", { token: user.accessToken, body: { response: key.register(options.body.challenge, "https://evil.example") } });
    expect(wrongOrigin.status).toBe(400);
    // The challenge was consumed by that attempt; ask for a new one.
    const options2 = await app.request("POST", "/auth/mfa/webauthn/register/options", { token: user.accessToken, body: { password: PASSWORD } });
    const registered = await app.request("POST", "/auth/mfa/webauthn/register/verify", { token: user.accessToken, body: { response: key.register(options2.body.challenge), label: "YubiKey" } });
    expect(registered.status).toBe(201);
    expect(registered.body.recoveryCodes).toHaveLength(10);
    const factors = await app.request("GET", "/auth/mfa", { token: user.accessToken });
    expect(factors.body.factors).toEqual([expect.objectContaining({ kind: "webauthn", label: "YubiKey", confirmed: true })]);

    const login = await app.request("POST", "/auth/login", { body: { email: user.email, password: PASSWORD } });
    expect(login.body.status).toBe("mfa_required");
    const assertionOptions = await app.request("POST", "/auth/login/mfa/webauthn/options", { body: { challengeToken: login.body.challengeToken } });
    expect(assertionOptions.status).toBe(200);
    expect(assertionOptions.body.allowCredentials).toEqual([expect.objectContaining({ id: b64url(key.credentialId) })]);
    const assertion = key.assert(assertionOptions.body.challenge);
    const done = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: login.body.challengeToken, method: "webauthn", response: assertion } });
    expect(done.status).toBe(200);
    expect(done.body.accessToken).toBeTruthy();

    // The same signed assertion against a new challenge, and a stale counter, both fail.
    const login2 = await app.request("POST", "/auth/login", { body: { email: user.email, password: PASSWORD } });
    const options3 = await app.request("POST", "/auth/login/mfa/webauthn/options", { body: { challengeToken: login2.body.challengeToken } });
    const replay = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: login2.body.challengeToken, method: "webauthn", response: assertion } });
    expect(replay.status).toBe(401);
    const staleCounter = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: login2.body.challengeToken, method: "webauthn", response: key.assert(options3.body.challenge, 1) } });
    expect(staleCounter.status).toBe(401);
    const fresh = await app.request("POST", "/auth/login/mfa", { body: { challengeToken: login2.body.challengeToken, method: "webauthn", response: key.assert(options3.body.challenge) } });
    expect(fresh.status).toBe(200);

    // A key registered to one user cannot be registered again by another.
    const other = await signup(app);
    const otherOptions = await app.request("POST", "/auth/mfa/webauthn/register/options", { token: other.accessToken, body: { password: PASSWORD } });
    const dup = await app.request("POST", "/auth/mfa/webauthn/register/verify", { token: other.accessToken, body: { response: key.register(otherOptions.body.challenge) } });
    expect(dup.status).toBe(409);
  });
});
