import { AuthError, ConfigError } from "../errors.js";
import { createHash } from "node:crypto";
import * as z from "zod";

/** Providers with built-in profile mapping. */
export const OAuthProviderName = z.enum(["github", "google"]);
export type OAuthProviderName = z.infer<typeof OAuthProviderName>;

/** One provider's client and endpoints; endpoints default to the real provider's. */
export const OAuthProviderOptions = z
  .object({
    clientId: z.string().min(1),
    clientSecret: z.string().min(1),
    /** Where the provider sends the browser back, i.e. your mounted `/oauth/<provider>/callback`. */
    redirectUri: z.url(),
    authorizeUrl: z.url().optional(),
    tokenUrl: z.url().optional(),
    userInfoUrl: z.url().optional(),
    /** GitHub only: the endpoint listing the user's emails with their verified flag. */
    emailsUrl: z.url().optional(),
    scopes: z.array(z.string().min(1)).optional(),
  })
  .strict();
export type OAuthProviderOptions = z.input<typeof OAuthProviderOptions>;

const DEFAULTS: Record<OAuthProviderName, { authorizeUrl: string; tokenUrl: string; userInfoUrl: string; emailsUrl?: string; scopes: string[] }> = {
  github: {
    authorizeUrl: "https://github.com/login/oauth/authorize",
    tokenUrl: "https://github.com/login/oauth/access_token",
    userInfoUrl: "https://api.github.com/user",
    emailsUrl: "https://api.github.com/user/emails",
    scopes: ["read:user", "user:email"],
  },
  google: {
    authorizeUrl: "https://accounts.google.com/o/oauth2/v2/auth",
    tokenUrl: "https://oauth2.googleapis.com/token",
    userInfoUrl: "https://openidconnect.googleapis.com/v1/userinfo",
    scopes: ["openid", "email", "profile"],
  },
};

/** A provider's settings with defaults filled in. */
export interface OAuthProvider {
  name: OAuthProviderName;
  clientId: string;
  clientSecret: string;
  redirectUri: string;
  authorizeUrl: string;
  tokenUrl: string;
  userInfoUrl: string;
  emailsUrl: string | undefined;
  scopes: string[];
}

export function resolveProvider(name: OAuthProviderName, options: OAuthProviderOptions): OAuthProvider {
  const parsed = OAuthProviderOptions.safeParse(options);
  if (!parsed.success) throw new ConfigError(`Invalid OAuth options for ${name}: ${z.prettifyError(parsed.error)}`);
  const defaults = DEFAULTS[name];
  const o = parsed.data;
  return {
    name,
    clientId: o.clientId,
    clientSecret: o.clientSecret,
    redirectUri: o.redirectUri,
    authorizeUrl: o.authorizeUrl ?? defaults.authorizeUrl,
    tokenUrl: o.tokenUrl ?? defaults.tokenUrl,
    userInfoUrl: o.userInfoUrl ?? defaults.userInfoUrl,
    emailsUrl: o.emailsUrl ?? defaults.emailsUrl,
    scopes: o.scopes ?? defaults.scopes,
  };
}

/** The S256 PKCE challenge of a verifier. */
export function pkceChallenge(verifier: string): string {
  return createHash("sha256").update(verifier).digest("base64url");
}

export function authorizeUrl(provider: OAuthProvider, state: string, verifier: string): string {
  const url = new URL(provider.authorizeUrl);
  url.searchParams.set("response_type", "code");
  url.searchParams.set("client_id", provider.clientId);
  url.searchParams.set("redirect_uri", provider.redirectUri);
  url.searchParams.set("scope", provider.scopes.join(" "));
  url.searchParams.set("state", state);
  url.searchParams.set("code_challenge", pkceChallenge(verifier));
  url.searchParams.set("code_challenge_method", "S256");
  return url.toString();
}

/** What we learn about a user from a provider. */
export interface OAuthProfile {
  subject: string;
  email: string | null;
  emailVerified: boolean;
  name: string | null;
}

const TokenResponse = z.object({ access_token: z.string().min(1), token_type: z.string().optional() });
const GitHubUser = z.object({ id: z.union([z.number(), z.string()]), email: z.string().nullish(), name: z.string().nullish() });
const GitHubEmails = z.array(z.object({ email: z.string(), primary: z.boolean(), verified: z.boolean() }));
const GoogleUser = z.object({
  sub: z.string().min(1),
  email: z.string().nullish(),
  email_verified: z.union([z.boolean(), z.literal("true"), z.literal("false")]).nullish(),
  name: z.string().nullish(),
});

function upstreamError(message: string): AuthError {
  return new AuthError("oauth_provider_error", message);
}

async function getJson(fetchImpl: typeof fetch, url: string, init: RequestInit): Promise<unknown> {
  let response: Response;
  try {
    response = await fetchImpl(url, { ...init, signal: AbortSignal.timeout(10_000) });
  } catch {
    throw upstreamError("OAuth provider unreachable");
  }
  if (!response.ok) throw upstreamError(`OAuth provider answered ${response.status}`);
  try {
    return await response.json();
  } catch {
    throw upstreamError("OAuth provider sent invalid JSON");
  }
}

/** Exchanges an authorization code (with its PKCE verifier) and reads the user's profile. */
export async function fetchProfile(provider: OAuthProvider, code: string, verifier: string, fetchImpl: typeof fetch): Promise<OAuthProfile> {
  const form = new URLSearchParams({
    grant_type: "authorization_code",
    code,
    redirect_uri: provider.redirectUri,
    client_id: provider.clientId,
    client_secret: provider.clientSecret,
    code_verifier: verifier,
  });
  const token = TokenResponse.safeParse(
    await getJson(fetchImpl, provider.tokenUrl, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
      body: form,
    }),
  );
  if (!token.success) throw upstreamError("OAuth provider sent no access token");
  const auth = { headers: { authorization: `Bearer ${token.data.access_token}`, accept: "application/json", "user-agent": "keen-gateway-kit" } };

  if (provider.name === "github") {
    const user = GitHubUser.safeParse(await getJson(fetchImpl, provider.userInfoUrl, auth));
    if (!user.success) throw upstreamError("Unexpected GitHub profile");
    let email: string | null = null;
    let verified = false;
    if (provider.emailsUrl) {
      const emails = GitHubEmails.safeParse(await getJson(fetchImpl, provider.emailsUrl, auth));
      if (!emails.success) throw upstreamError("Unexpected GitHub email list");
      const primary = emails.data.find((e) => e.primary && e.verified) ?? emails.data.find((e) => e.verified);
      if (primary) {
        email = primary.email;
        verified = true;
      }
    }
    // The profile email alone carries no verified flag, so it never links accounts.
    if (!email && user.data.email) email = user.data.email;
    return { subject: String(user.data.id), email, emailVerified: verified, name: user.data.name ?? null };
  }
  const user = GoogleUser.safeParse(await getJson(fetchImpl, provider.userInfoUrl, auth));
  if (!user.success) throw upstreamError("Unexpected Google profile");
  const verified = user.data.email_verified === true || user.data.email_verified === "true";
  return { subject: user.data.sub, email: user.data.email ?? null, emailVerified: verified, name: user.data.name ?? null };
}
