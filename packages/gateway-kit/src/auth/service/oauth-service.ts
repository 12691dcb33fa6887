import { randomUUID } from "node:crypto";
import { AuthError } from "../../errors.js";
import type { Principal } from "../../principal.js";
import type { AuthContext } from "./context.js";
import { authorizeUrl, fetchProfile, type OAuthProviderName } from "../oauth.js";
import { digestsEqual, randomToken, sha256Hex } from "../secrets.js";
import { normaliseEmail } from "../password.js";
import type { LoginResult, RequestMeta } from "./types.js";

/** Sign-in with an OAuth provider: authorization code + PKCE + state bound to the browser. */
export interface OAuthService {
  oauthStart(providerName: string): Promise<{ url: string; browserBinding: string; expiresInSeconds: number }>;
  oauthCallback(
    providerName: string,
    input: { code: string; state: string; browserBinding: string | undefined },
    meta?: RequestMeta,
  ): Promise<LoginResult>;
}


/**
 * True when a character of `address` other than ASCII becomes ASCII under the folding emails are
 * compared by (NFKC, lower-casing): a KELVIN SIGN becomes k, fullwidth letters their ASCII twins,
 * `ſ` an s, `İ` an i. Such an address is a different mailbox that reads as another one.
 */
function foldsIntoAscii(address: string): boolean {
  for (const char of address.trim()) {
    if (char.charCodeAt(0) < 0x80) continue;
    if (/[\x00-\x7f]/.test(char.normalize("NFKC").toLowerCase())) return true;
  }
  return false;
}

export function createOAuthService(context: AuthContext): OAuthService {
  const { config, stores, now, providers, fetchImpl, audit, notFound, chooseTeam, afterFirstFactor } = context;

  return {
    /**
     * Where to send the browser to sign in with a provider (authorization code + PKCE + state),
     * and `browserBinding`: a secret the caller must keep in the initiating browser (the router
     * sets it as an HttpOnly, SameSite cookie) and hand back to `oauthCallback`. The state and
     * the PKCE verifier are only usable together with it, so a callback URL carrying someone
     * else's code and state signs no other browser in (login CSRF).
     */
    async oauthStart(providerName: string): Promise<{ url: string; browserBinding: string; expiresInSeconds: number }> {
      const provider = providers.get(providerName as OAuthProviderName);
      if (!provider) throw notFound("OAuth provider");
      const state = randomToken(24);
      const verifier = randomToken(48);
      const browserBinding = randomToken(32);
      const at = now();
      const ttl = config.oauthStateTtlSeconds;
      await stores.flows.put(
        { id: sha256Hex(state), kind: `oauth:${provider.name}`, userId: null, data: { verifier, bindingHash: sha256Hex(browserBinding) }, attempts: 0, expiresAt: new Date(at.getTime() + ttl * 1000) },
        at,
      );
      return { url: authorizeUrl(provider, state, verifier), browserBinding, expiresInSeconds: ttl };
    },

    /**
     * Finishes an OAuth sign-in: checks state, exchanges the code with PKCE, then signs in the
     * linked user, links an existing user by verified email, or creates one.
     */
    async oauthCallback(
      providerName: string,
      input: { code: string; state: string; browserBinding: string | undefined },
      meta: RequestMeta = {},
    ): Promise<LoginResult> {
      const provider = providers.get(providerName as OAuthProviderName);
      if (!provider) throw notFound("OAuth provider");
      const invalidState = () => new AuthError("invalid_state", "OAuth state is invalid or expired");
      const kind = `oauth:${provider.name}`;
      const stateId = sha256Hex(input.state);
      const pending = await stores.flows.peek(stateId, kind, now());
      // Checked before the state is consumed: a browser that did not start this sign-in cannot burn it either.
      if (!pending || typeof pending.data.bindingHash !== "string" || !input.browserBinding || !digestsEqual(sha256Hex(input.browserBinding), pending.data.bindingHash)) {
        throw new AuthError("invalid_state", "This sign-in was not started in this browser, or it expired; start again");
      }
      const flow = await stores.flows.take(stateId, kind, now());
      const verifier = flow?.data.verifier;
      if (typeof verifier !== "string") throw invalidState();
      const profile = await fetchProfile(provider, input.code, verifier, fetchImpl);
      const at = now();
      const linked = await stores.oauthAccounts.find(provider.name, profile.subject);
      let user = linked ? await stores.users.findById(linked.userId) : undefined;
      if (!user) {
        if (!profile.email || !profile.emailVerified) {
          throw new AuthError("email_not_verified", "The provider did not confirm a verified email address");
        }
        // The provider verified one exact mailbox. Unicode folding makes distinct addresses equal:
        // `\u212Aate@x.com` (KELVIN SIGN) would sign in as `kate@x.com` for whoever got that
        // lookalike verified, and take over kate's account. Such an address is refused.
        if (foldsIntoAscii(profile.email)) {
          throw new AuthError("email_not_verified", "The provider's address reads as another one once folded; sign up with email and password instead");
        }
        const email = normaliseEmail(profile.email);
        const existing = await stores.users.findByEmail(email);
        if (existing && !existing.emailVerified) {
          // Account pre-hijacking: whoever signed up with this address never proved they own it,
          // and linking would hand the provider's owner an account whose password, sessions and
          // keys someone else may hold. Refuse; the owner of the address proves it first.
          await audit(meta, { tenantId: null, actorId: existing.id, action: "auth.oauth_link", target: `user:${existing.id}`, result: "denied", details: { provider: provider.name, reason: "email_unverified" } });
          throw new AuthError(
            "account_email_unverified",
            "An account with this email exists but its address was never verified; sign in to it with its password and verify the address before linking a provider",
          );
        }
        const created = await stores.transaction(async (tx) => {
          let target = existing;
          if (!target) {
            const userId = randomUUID();
            const teamId = randomUUID();
            target = await tx.users.create({ id: userId, email, emailVerified: true, passwordHash: null, displayName: profile.name }, at);
            await tx.teams.create({ id: teamId, name: "Personal", personal: true }, at);
            await tx.teams.addMember(teamId, userId, "owner", at);
          }
          await tx.oauthAccounts.link({ provider: provider.name, subject: profile.subject, userId: target.id, email }, at);
          return target;
        });
        user = created;
        await audit(meta, { tenantId: null, actorId: user.id, action: "auth.oauth_link", target: `user:${user.id}`, result: "success", details: { provider: provider.name, created: !existing } });
      }
      const teamId = await chooseTeam(user.id, undefined);
      return afterFirstFactor(user, teamId, meta, `oauth:${provider.name}`);
    },
  };
}
