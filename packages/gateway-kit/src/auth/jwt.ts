import { AuthError, ConfigError } from "../errors.js";
import { randomUUID } from "node:crypto";
import { errors, exportJWK, generateKeyPair, importJWK, jwtVerify, SignJWT, type CryptoKey, type JWK, type KeyObject } from "jose";
import * as z from "zod";

/** Asymmetric algorithms an access token may be signed with. Symmetric ones are refused on purpose. */
export const JwtAlgorithm = z.enum(["EdDSA", "ES256", "ES384", "RS256", "PS256"]);
export type JwtAlgorithm = z.infer<typeof JwtAlgorithm>;

type Key = CryptoKey | KeyObject;

interface VerificationKey {
  kid: string;
  key: Key;
  publicJwk: JWK;
  /** After this instant the key no longer verifies anything. */
  retireAt: Date | null;
}

/**
 * The signing key and the public keys that still verify, each with a `kid`. Rotation keeps the
 * previous public key until the tokens it signed have expired.
 *
 * @example
 * const keys = await JwtKeySet.generate({ algorithm: "EdDSA" });
 * await keys.rotate({ retireAfterSeconds: 15 * 60 }); // new tokens use a new key; old ones still verify
 */
export class JwtKeySet {
  private signing: { kid: string; key: Key };
  private readonly verifying = new Map<string, VerificationKey>();

  private constructor(
    readonly algorithm: JwtAlgorithm,
    signing: { kid: string; key: Key },
    private readonly now: () => Date,
  ) {
    this.signing = signing;
  }

  /** A key set with a freshly generated key pair. */
  static async generate(options: { algorithm?: JwtAlgorithm; now?: () => Date } = {}): Promise<JwtKeySet> {
    const algorithm = parseAlgorithm(options.algorithm ?? "EdDSA");
    const pair = await generateKeyPair(algorithm, { extractable: true });
    const kid = randomUUID();
    const set = new JwtKeySet(algorithm, { kid, key: pair.privateKey }, options.now ?? (() => new Date()));
    await set.addVerificationKey(kid, pair.publicKey, null);
    return set;
  }

  /**
   * A key set from stored JWKs: one private signing key (with `kid`) and any older public keys
   * that should keep verifying (with an optional retirement time).
   */
  static async fromJwks(options: {
    algorithm: JwtAlgorithm;
    signing: JWK;
    verifying?: Array<{ jwk: JWK; retireAt?: Date | null }>;
    now?: () => Date;
  }): Promise<JwtKeySet> {
    const algorithm = parseAlgorithm(options.algorithm);
    const { signing } = options;
    if (!signing.kid) throw new ConfigError("The signing JWK needs a kid");
    if (!signing.d) throw new ConfigError("The signing JWK must be a private key");
    const key = (await importJWK(signing, algorithm)) as Key;
    const set = new JwtKeySet(algorithm, { kid: signing.kid, key }, options.now ?? (() => new Date()));
    const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...publicPart } = signing;
    await set.addVerificationKey(signing.kid, (await importJWK(publicPart, algorithm)) as Key, null);
    for (const entry of options.verifying ?? []) {
      if (!entry.jwk.kid) throw new ConfigError("Every verification JWK needs a kid");
      await set.addVerificationKey(entry.jwk.kid, (await importJWK(entry.jwk, algorithm)) as Key, entry.retireAt ?? null);
    }
    return set;
  }

  /** The `kid` new tokens are signed with. */
  get currentKid(): string {
    return this.signing.kid;
  }

  /**
   * Starts signing with a new key; the old public key keeps verifying for `retireAfterSeconds`
   * (at least the access-token lifetime, so no live token is orphaned).
   */
  async rotate(options: { retireAfterSeconds: number }): Promise<string> {
    if (!Number.isFinite(options.retireAfterSeconds) || options.retireAfterSeconds < 0) {
      throw new ConfigError("retireAfterSeconds must be a non-negative number");
    }
    const previous = this.verifying.get(this.signing.kid);
    if (previous) previous.retireAt = new Date(this.now().getTime() + options.retireAfterSeconds * 1000);
    const pair = await generateKeyPair(this.algorithm, { extractable: true });
    const kid = randomUUID();
    await this.addVerificationKey(kid, pair.publicKey, null);
    this.signing = { kid, key: pair.privateKey };
    return kid;
  }

  /** The public keys that still verify, as a JWKS document (e.g. for `/.well-known/jwks.json`). */
  jwks(): { keys: JWK[] } {
    this.prune();
    return { keys: [...this.verifying.values()].map((k) => k.publicJwk) };
  }

  /** @internal */
  signingKey(): { kid: string; key: Key } {
    return this.signing;
  }

  /** @internal The live verification key for a `kid`, if any. */
  verificationKey(kid: string | undefined): Key | undefined {
    if (!kid) return undefined;
    this.prune();
    return this.verifying.get(kid)?.key;
  }

  private async addVerificationKey(kid: string, key: Key, retireAt: Date | null): Promise<void> {
    const publicJwk = { ...(await exportJWK(key)), kid, alg: this.algorithm, use: "sig" };
    this.verifying.set(kid, { kid, key, publicJwk, retireAt });
  }

  private prune(): void {
    const now = this.now().getTime();
    for (const [kid, entry] of this.verifying) {
      if (entry.retireAt && entry.retireAt.getTime() <= now) this.verifying.delete(kid);
    }
  }
}

function parseAlgorithm(value: unknown): JwtAlgorithm {
  const parsed = JwtAlgorithm.safeParse(value);
  if (!parsed.success) throw new ConfigError(`Unsupported JWT algorithm ${JSON.stringify(value)}; use one of ${JwtAlgorithm.options.join(", ")}`);
  return parsed.data;
}

/** The claims an access token carries, as the app sees them. */
export interface AccessTokenClaims {
  userId: string;
  sessionId: string;
  teamId?: string;
}

export const AccessTokenOptions = z.object({
  issuer: z.string().min(1),
  audience: z.string().min(1),
  /** Lifetime in seconds. Default 15 minutes. */
  ttlSeconds: z.number().int().min(1).max(24 * 3600).default(900),
  /** Allowed clock skew when checking `exp`/`nbf`. Default 5 s. */
  clockToleranceSeconds: z.number().int().min(0).max(300).default(5),
});

/** The `typ` header of access tokens (RFC 9068), checked on every verification. */
export const ACCESS_TOKEN_TYPE = "at+jwt";

/** Issues and verifies short-lived JWT access tokens. */
export interface AccessTokens {
  readonly ttlSeconds: number;
  sign(claims: AccessTokenClaims): Promise<{ token: string; expiresAt: Date }>;
  /** Returns the claims or throws an `AuthError` (`token_expired` or `invalid_token`). */
  verify(token: string): Promise<AccessTokenClaims>;
}

/**
 * JWT access tokens with the algorithm pinned to the key set's, and `iss`, `aud`, `exp`, `nbf`
 * and `typ` checked on every verification.
 *
 * @example
 * const tokens = createAccessTokens({ keys, issuer: "https://keen.example", audience: "keen-api" });
 * const { token } = await tokens.sign({ userId, sessionId });
 * const claims = await tokens.verify(token);
 */
export function createAccessTokens(
  options: z.input<typeof AccessTokenOptions> & { keys: JwtKeySet; now?: () => Date },
): AccessTokens {
  if (!(options.keys instanceof JwtKeySet)) throw new ConfigError("createAccessTokens needs a JwtKeySet as `keys`");
  const parsed = AccessTokenOptions.safeParse(options);
  if (!parsed.success) throw new ConfigError(`Invalid access token options: ${z.prettifyError(parsed.error)}`);
  const { issuer, audience, ttlSeconds, clockToleranceSeconds } = parsed.data;
  const { keys } = options;
  const now = options.now ?? (() => new Date());
  const algorithm = keys.algorithm;

  return {
    ttlSeconds,
    async sign(claims) {
      const { kid, key } = keys.signingKey();
      const issuedAt = Math.floor(now().getTime() / 1000);
      const payload: Record<string, unknown> = { sid: claims.sessionId };
      if (claims.teamId) payload.tid = claims.teamId;
      const token = await new SignJWT(payload)
        .setProtectedHeader({ alg: algorithm, kid, typ: ACCESS_TOKEN_TYPE })
        .setSubject(claims.userId)
        .setIssuer(issuer)
        .setAudience(audience)
        .setIssuedAt(issuedAt)
        .setNotBefore(issuedAt)
        .setExpirationTime(issuedAt + ttlSeconds)
        .setJti(randomUUID())
        .sign(key);
      return { token, expiresAt: new Date((issuedAt + ttlSeconds) * 1000) };
    },
    async verify(token) {
      try {
        const { payload } = await jwtVerify(
          token,
          (header) => {
            const key = keys.verificationKey(header.kid);
            if (!key) throw new TokenRejected("unknown_key", "Token signed by an unknown or retired key");
            return key;
          },
          {
            algorithms: [algorithm],
            issuer,
            audience,
            typ: ACCESS_TOKEN_TYPE,
            currentDate: now(),
            clockTolerance: clockToleranceSeconds,
            requiredClaims: ["sub", "exp", "nbf", "iat", "sid"],
          },
        );
        if (typeof payload.sub !== "string" || typeof payload.sid !== "string") throw new TokenRejected("bad_claims", "Malformed claims");
        if (payload.tid !== undefined && typeof payload.tid !== "string") throw new TokenRejected("bad_claims", "Malformed claims");
        return { userId: payload.sub, sessionId: payload.sid, ...(payload.tid ? { teamId: payload.tid as string } : {}) };
      } catch (error) {
        throw toAuthError(error);
      }
    },
  };
}

class TokenRejected extends Error {
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

/** The edge answers both with 401 and a `WWW-Authenticate` naming the reason (see `errorStatuses`). */
function toAuthError(error: unknown): AuthError {
  if (error instanceof errors.JWTExpired) {
    return new AuthError("token_expired", "Access token expired", { details: { reason: "expired" } });
  }
  let reason = "invalid";
  if (error instanceof TokenRejected) reason = error.reason;
  else if (error instanceof errors.JOSEAlgNotAllowed) reason = "algorithm_not_allowed";
  else if (error instanceof errors.JWSSignatureVerificationFailed) reason = "bad_signature";
  else if (error instanceof errors.JWTClaimValidationFailed) reason = `bad_claim_${error.claim}`;
  else if (error instanceof errors.JWSInvalid || error instanceof errors.JWTInvalid) reason = "malformed";
  return new AuthError("invalid_token", "Invalid access token", { details: { reason } });
}
