import { createHash, randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, expect, it } from "vitest";
import { describeEachDatabase } from "../testing/each-database.js";
import { migrateForTests, PASSWORD, signup, startTestApp, uniqueEmail, type TestApp } from "./test-app.js";

interface FakeProfile {
  github?: { user: { id: number; name: string; email: string | null }; emails: Array<{ email: string; primary: boolean; verified: boolean }> };
  google?: { sub: string; email: string; email_verified: boolean };
}

/** A local OAuth provider: authorize (issues a code bound to the PKCE challenge), token and user-info endpoints. */
async function startFakeProvider() {
  const codes = new Map<string, { challenge: string; redirectUri: string; profile: FakeProfile }>();
  const tokens = new Map<string, FakeProfile>();
  let next: FakeProfile = {};
  const tokenRequests: Array<Record<string, string>> = [];
  const server: Server = createServer(async (req, res) => {
    const url = new URL(req.url!, "http://127.0.0.1");
    const json = (status: number, body: unknown) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    if (url.pathname === "/authorize") {
      const code = randomBytes(8).toString("hex");
      codes.set(code, { challenge: url.searchParams.get("code_challenge")!, redirectUri: url.searchParams.get("redirect_uri")!, profile: next });
      const back = new URL(url.searchParams.get("redirect_uri")!);
      back.searchParams.set("code", code);
      back.searchParams.set("state", url.searchParams.get("state")!);
      res.writeHead(302, { location: back.toString() });
      return res.end();
    }
    if (url.pathname === "/token" && req.method === "POST") {
      let raw = "";
      for await (const chunk of req) raw += chunk;
      const form = Object.fromEntries(new URLSearchParams(raw));
      tokenRequests.push(form);
      const grant = codes.get(form.code ?? "");
      codes.delete(form.code ?? "");
      const pkceOk = grant && createHash("sha256").update(form.code_verifier ?? "").digest("base64url") === grant.challenge;
      if (!grant || !pkceOk || form.client_secret !== "shh" || form.redirect_uri !== grant.redirectUri) return json(400, { error: "invalid_grant" });
      const token = randomBytes(8).toString("hex");
      tokens.set(token, grant.profile);
      return json(200, { access_token: token, token_type: "bearer" });
    }
    const profile = tokens.get((req.headers.authorization ?? "").replace(/^Bearer /, ""));
    if (!profile) return json(401, { error: "bad token" });
    if (url.pathname === "/gh/user" && profile.github) return json(200, profile.github.user);
    if (url.pathname === "/gh/emails" && profile.github) return json(200, profile.github.emails);
    if (url.pathname === "/google/userinfo" && profile.google) return json(200, profile.google);
    return json(404, {});
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    base,
    tokenRequests,
    setProfile: (profile: FakeProfile) => void (next = profile),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describeEachDatabase("OAuth", (fixture) => {
  let app: TestApp;
  let provider: Awaited<ReturnType<typeof startFakeProvider>>;
  beforeAll(async () => {
    await migrateForTests(fixture);
    provider = await startFakeProvider();
    const common = { clientId: "keen-client", clientSecret: "shh", authorizeUrl: `${provider.base}/authorize`, tokenUrl: `${provider.base}/token` };
    app = await startTestApp(fixture, {
      oauth: {
        github: { ...common, redirectUri: "http://localhost/auth/oauth/github/callback", userInfoUrl: `${provider.base}/gh/user`, emailsUrl: `${provider.base}/gh/emails` },
        google: { ...common, redirectUri: "http://localhost/auth/oauth/google/callback", userInfoUrl: `${provider.base}/google/userinfo` },
      },
    });
  });
  afterAll(async () => {
    await app?.close();
    await provider?.close();
  });

  /** The `name=value` pairs a browser would send back from a response's Set-Cookie headers. */
  const cookiesOf = (headers: Headers) => headers.getSetCookie().map((c) => c.split(";")[0]!).join("; ");

  /** Plays the browser: start → provider authorize → back to our callback, carrying the start's cookie. */
  async function signIn(name: "github" | "google", profile: FakeProfile) {
    provider.setProfile(profile);
    const start = await app.request("GET", `/auth/oauth/${name}/start`);
    expect(start.status).toBe(302);
    const cookie = cookiesOf(start.headers);
    const authorize = new URL(start.headers.get("location")!);
    expect(authorize.searchParams.get("code_challenge_method")).toBe("S256");
    expect(authorize.searchParams.get("state")).toBeTruthy();
    const redirect = await fetch(authorize, { redirect: "manual" });
    const back = new URL(redirect.headers.get("location")!);
    const callback = await app.request("GET", `${back.pathname}${back.search}`, { headers: { cookie } });
    return { callback, cookie, state: back.searchParams.get("state")!, code: back.searchParams.get("code")! };
  }

  it("creates a user from a verified GitHub email, with PKCE, and signs the same account in again", async () => {
    const email = uniqueEmail("gh");
    const profile = { github: { user: { id: 4242, name: "Octo", email: null }, emails: [{ email, primary: true, verified: true }] } };
    const first = await signIn("github", profile);
    expect(first.callback.status).toBe(200);
    expect(first.callback.body.status).toBe("authenticated");
    expect(provider.tokenRequests.at(-1)).toMatchObject({ grant_type: "authorization_code", client_id: "keen-client" });
    const me = await app.request("GET", "/auth/me", { token: first.callback.body.accessToken });
    expect(me.body.user).toMatchObject({ email, emailVerified: true });

    const again = await signIn("github", profile);
    const me2 = await app.request("GET", "/auth/me", { token: again.callback.body.accessToken });
    expect(me2.body.user.id).toBe(me.body.user.id);

    // The state is single-use.
    const replay = await app.request("GET", `/auth/oauth/github/callback?code=${again.code}&state=${again.state}`, { headers: { cookie: again.cookie } });
    expect(replay.status).toBe(400);
    expect(replay.body.error.code).toBe("invalid_state");
  });

  it("links Google to an existing account only by a verified email", async () => {
    const existing = await signup(app);
    const unverified = await signIn("google", { google: { sub: "g-unverified", email: existing.email, email_verified: false } });
    expect(unverified.callback.status).toBe(403);
    expect(unverified.callback.body.error.code).toBe("email_not_verified");
    // Only an account whose own address was verified is linked (see the pre-hijacking test).
    await app.service.stores.users.markEmailVerified(existing.user.id);

    const linked = await signIn("google", { google: { sub: `g-${existing.user.id}`, email: existing.email.toUpperCase(), email_verified: true } });
    expect(linked.callback.status).toBe(200);
    const me = await app.request("GET", "/auth/me", { token: linked.callback.body.accessToken });
    expect(me.body.user.id).toBe(existing.user.id);
    // The password still works too.
    expect((await app.request("POST", "/auth/login", { body: { email: existing.email, password: PASSWORD } })).status).toBe(200);
  });

  it("never links a provider address that only Unicode folding makes equal to an account's (Kelvin sign, fullwidth, long s)", async () => {
    const local = `kates${Math.random().toString(36).slice(2, 8)}`;
    const victim = await signup(app, `${local}@example.com`);
    await app.service.stores.users.markEmailVerified(victim.user.id);
    const lookalikes = [
      `\u212A${local.slice(1)}@example.com`, // KELVIN SIGN lower-cases to k
      `${[...local].map((c) => String.fromCharCode(c.charCodeAt(0) + 0xfee0)).join("")}@example.com`, // fullwidth
      `${local.replace("s", "\u017F")}@example.com`, // LATIN SMALL LETTER LONG S folds to s
      `${local.replace("t", "\u1D57")}@example.com`, // MODIFIER LETTER SMALL T folds to t
    ];
    for (const [i, email] of lookalikes.entries()) {
      const attempt = await signIn("google", { google: { sub: `g-lookalike-${local}-${i}`, email, email_verified: true } });
      expect(attempt.callback.status, email).toBe(403);
      expect(attempt.callback.body.error.code, email).toBe("email_not_verified");
    }
    const links = await fixture.database.db.selectFrom("oauth_accounts").select("user_id").where("user_id", "=", victim.user.id).execute();
    expect(links).toEqual([]);
    // Plain ASCII case is the same mailbox, and still links.
    const owner = await signIn("google", { google: { sub: `g-owner-${local}`, email: ` ${local.toUpperCase()}@Example.COM`, email_verified: true } });
    expect(owner.callback.status).toBe(200);
  });

  it("binds the state to the browser that started the sign-in: a callback URL opened elsewhere signs nobody in (login CSRF)", async () => {
    // The attacker runs the flow with their own provider account and stops before the callback.
    provider.setProfile({ github: { user: { id: 9001, name: "Mallory", email: null }, emails: [{ email: uniqueEmail("mallory"), primary: true, verified: true }] } });
    const start = await app.request("GET", "/auth/oauth/github/start");
    const setCookie = start.headers.getSetCookie().join("\n");
    expect(setCookie).toMatch(/keen_oauth_github=/);
    expect(setCookie).toMatch(/httponly/i);
    expect(setCookie).toMatch(/samesite=lax/i);
    expect(setCookie).toMatch(/path=\/auth\/oauth\/github/i);
    const attackerCookie = cookiesOf(start.headers);
    const redirect = await fetch(new URL(start.headers.get("location")!), { redirect: "manual" });
    const back = new URL(redirect.headers.get("location")!);
    const callbackPath = `${back.pathname}${back.search}`;

    // The victim's browser opens the link: without the cookie, or with the cookie of its own sign-in.
    const bare = await app.request("GET", callbackPath);
    expect(bare.status).toBe(400);
    expect(bare.body.error.code).toBe("invalid_state");
    expect(bare.body.accessToken).toBeUndefined();
    const victimStart = await app.request("GET", "/auth/oauth/github/start");
    const crossed = await app.request("GET", callbackPath, { headers: { cookie: cookiesOf(victimStart.headers) } });
    expect(crossed.status).toBe(400);
    expect(crossed.body.accessToken).toBeUndefined();

    // A HEAD (a link preview) answers without spending the state; the starting browser still completes.
    const head = await app.request("HEAD", callbackPath, { headers: { cookie: attackerCookie } });
    expect(head.status).toBeLessThan(300);
    const own = await app.request("GET", callbackPath, { headers: { cookie: attackerCookie } });
    expect(own.status).toBe(200);
    expect(own.headers.get("cache-control")).toBe("no-store");
    expect(own.headers.getSetCookie().join("\n")).toMatch(/keen_oauth_github=;/);
  });

  it("never links a provider to an account whose email was never verified (pre-hijacking)", async () => {
    // The attacker registers the victim's address first, with a password of their own.
    const victimEmail = uniqueEmail("victim");
    const attacker = await signup(app, victimEmail);
    const result = await signIn("google", { google: { sub: `g-victim-${attacker.user.id}`, email: victimEmail, email_verified: true } });
    expect(result.callback.status).toBe(409);
    expect(result.callback.body.error.code).toBe("account_email_unverified");
    expect(result.callback.body.accessToken).toBeUndefined();
    const row = await fixture.database.db.selectFrom("users").select("email_verified").where("id", "=", attacker.user.id).executeTakeFirstOrThrow();
    expect(row.email_verified).toBe(false);
    const links = await fixture.database.db.selectFrom("oauth_accounts").selectAll().where("user_id", "=", attacker.user.id).execute();
    expect(links).toEqual([]);
  });

  it("refuses forged state, unknown providers and provider denials with 4xx", async () => {
    expect((await app.request("GET", "/auth/oauth/github/callback?code=abc&state=forged")).status).toBe(400);
    expect((await app.request("GET", "/auth/oauth/github/callback")).status).toBe(400);
    expect((await app.request("GET", "/auth/oauth/myspace/start")).status).toBe(404);
    expect((await app.request("GET", "/auth/oauth/github/callback?error=access_denied")).body.error.code).toBe("oauth_denied");
    const json = await app.request("GET", "/auth/oauth/google/start?mode=json");
    expect(json.body.url).toContain(`${provider.base}/authorize`);
  });
});
