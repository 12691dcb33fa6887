import { randomUUID } from "node:crypto";
import { AuthError } from "../../errors.js";
import type { Principal } from "../../principal.js";
import type { AuthContext } from "./context.js";
import { mintApiKey, parseApiKey, secretMatches } from "../api-keys.js";
import { effectiveScopes } from "../permissions.js";
import type { ApiKeyRecord } from "../stores.js";
import type { ApiKeyView, Reauthentication, RequestMeta } from "./types.js";

/** API keys: minting (scopes narrow, never widen), listing, revoking and verifying. */
export interface ApiKeyService {
  /**
   * Mints a key for the signed-in user's team. A key outlives the session that made it, so
   * minting one re-authenticates like changing how the account signs in: the password (or, for
   * an account without one, a sign-in at most `reauthMaxAgeSeconds` old), never an API key.
   * Throws `reauthentication_required` (401), `invalid_password` (403, counted by the login
   * limiter) or `forbidden` (403).
   *
   * @example
   * const { key } = await auth.createApiKey(principal, { name: "ci", scopes: ["sessions:read"] }, { password });
   */
  createApiKey(
    principal: Principal,
    input: { name: string; scopes: string[]; expiresAt?: Date | undefined },
    reauth?: Reauthentication,
    meta?: RequestMeta,
  ): Promise<ApiKeyView & { key: string }>;
  listApiKeys(principal: Principal): Promise<ApiKeyView[]>;
  revokeApiKey(principal: Principal, id: string, meta?: RequestMeta): Promise<void>;
  verifyApiKey(presented: string): Promise<Principal>;
}


export function createApiKeyService(context: AuthContext): ApiKeyService {
  const { config, stores, now, keyCache, audit, notFound, reauthenticate } = context;
  const lastTouched = new Map<string, number>();

  function toKeyView(key: ApiKeyRecord): ApiKeyView {
    return {
      id: key.id,
      name: key.name,
      prefix: key.prefix,
      scopes: key.scopes,
      userId: key.userId,
      teamId: key.teamId,
      createdAt: key.createdAt.toISOString(),
      expiresAt: key.expiresAt?.toISOString() ?? null,
      lastUsedAt: key.lastUsedAt?.toISOString() ?? null,
    };
  }

  return {
    async createApiKey(
      principal: Principal,
      input: { name: string; scopes: string[]; expiresAt?: Date | undefined },
      reauth: Reauthentication = {},
      meta: RequestMeta = {},
    ): Promise<ApiKeyView & { key: string }> {
      // A key never mints keys: a leaked one must not be able to outlive its own revocation.
      if (principal.via !== "jwt") throw new AuthError("forbidden", "This needs a signed-in user, not an API key");
      if (!principal.teamId) throw new AuthError("forbidden", "API keys belong to a team; sign in to one");
      const held = new Set(principal.scopes);
      // A key can only carry rights its creator holds right now: scopes narrow, never widen.
      const missing = input.scopes.find((s) => !held.has(s));
      if (missing) throw new AuthError("forbidden", `Missing permission ${missing}`, { details: { missing } });
      const at = now();
      if (input.expiresAt && input.expiresAt.getTime() <= at.getTime()) {
        throw new AuthError("invalid_request", "expiresAt must be in the future");
      }
      // Last, so a request refused for what it asks never spends a password guess.
      await reauthenticate(principal, reauth, meta);
      const minted = mintApiKey();
      const record: ApiKeyRecord = {
        id: randomUUID(),
        prefix: minted.prefix,
        secretHash: minted.secretHash,
        userId: principal.userId,
        teamId: principal.teamId,
        name: input.name,
        scopes: [...new Set(input.scopes)],
        createdAt: at,
        expiresAt: input.expiresAt ?? null,
        revokedAt: null,
        lastUsedAt: null,
      };
      await stores.apiKeys.create(record);
      await audit(meta, { tenantId: principal.teamId, actorId: principal.userId, action: "api_key.create", target: `api_key:${record.id}`, result: "success", details: { scopes: record.scopes } });
      return { ...toKeyView(record), key: minted.key };
    },

    /** Keys of the principal in its team; with `team:manage`, every key of the team. */
    async listApiKeys(principal: Principal): Promise<ApiKeyView[]> {
      if (!principal.teamId) return [];
      const all = principal.scopes.includes("team:manage");
      return (await stores.apiKeys.list(principal.teamId, all ? undefined : principal.userId)).map(toKeyView);
    },

    async revokeApiKey(principal: Principal, id: string, meta: RequestMeta = {}) {
      const key = await stores.apiKeys.findById(id);
      const mayRevoke =
        key &&
        key.revokedAt === null &&
        key.teamId === principal.teamId &&
        (key.userId === principal.userId || principal.scopes.includes("team:manage"));
      // Keys of other tenants are reported missing, never forbidden.
      if (!key || !mayRevoke) throw notFound("API key");
      await stores.apiKeys.revoke(key.id, now());
      keyCache.delete(key.prefix);
      await audit(meta, { tenantId: key.teamId, actorId: principal.userId, action: "api_key.revoke", target: `api_key:${key.id}`, result: "success" });
    },

    /** Verifies an API key and returns its principal; throws 401 `invalid_api_key` otherwise. */
    async verifyApiKey(presented: string): Promise<Principal> {
      const invalid = (message = "Invalid API key") =>
        new AuthError("invalid_api_key", message);
      const parsedKey = parseApiKey(presented);
      if (!parsedKey) throw invalid();
      let found = keyCache.get(parsedKey.prefix);
      if (!found) {
        // Taken before the read: a revocation or eviction while it runs keeps it out of the cache.
        const generation = keyCache.generation();
        found = await stores.apiKeys.findForVerification(parsedKey.prefix);
        if (found && found.key.revokedAt === null) keyCache.set(parsedKey.prefix, found, generation);
      }
      // Unknown prefixes compare against a dummy hash, so both paths do the same work.
      if (!secretMatches(parsedKey.secret, found?.key.secretHash) || !found) throw invalid();
      const { key, ownerRole } = found;
      const at = now();
      if (key.revokedAt !== null) throw invalid("API key revoked");
      if (key.expiresAt && key.expiresAt.getTime() <= at.getTime()) throw invalid("API key expired");
      if (!ownerRole) throw invalid("API key owner is no longer a member of its team");
      // Writing last_used_at on every request would cost a write per call; once per interval is enough.
      const touched = lastTouched.get(key.id) ?? key.lastUsedAt?.getTime() ?? Number.NEGATIVE_INFINITY;
      if (at.getTime() - touched >= config.apiKeyTouchIntervalMs) {
        lastTouched.set(key.id, at.getTime());
        if (lastTouched.size > 100_000) lastTouched.clear();
        await stores.apiKeys.touch(key.id, at);
      }
      return { userId: key.userId, teamId: key.teamId, via: "api_key", scopes: effectiveScopes(key.scopes, ownerRole), apiKeyId: key.id };
    },
  };
}
