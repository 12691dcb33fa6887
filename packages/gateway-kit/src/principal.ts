/**
 * Who is making a request, as `authenticate()` puts it on `ctx.state.principal`.
 * API-key principals carry the key's scopes, which can only narrow the owner's rights.
 */
export interface Principal {
  userId: string;
  teamId?: string;
  via: "jwt" | "api_key";
  scopes: string[];
  /** The login session (refresh-token family) a JWT belongs to. */
  sessionId?: string;
  /** The API key used, when `via` is `api_key`. */
  apiKeyId?: string;
}

declare module "koa" {
  interface DefaultState {
    principal?: Principal;
    /** Set by the request-id middleware or taken from `X-Request-Id`. */
    requestId?: string;
  }
}
