import { ConfigError } from "../errors.js";
import { bodyParser } from "@koa/bodyparser";
import { Router } from "@koa/router";
import type { Middleware, ParameterizedContext } from "koa";
import * as z from "zod";
import { requestIp } from "../http/index.js";
import { errorHandler, errorStatus, HttpError } from "../http-error.js";
import type { Principal } from "../principal.js";
import { authenticate } from "./authenticate.js";
import { MfaProof, type AuthService, type RequestMeta } from "./auth-service.js";
import { Email, NewPassword } from "./password.js";
import { WebAuthnResponse } from "./webauthn.js";

const Id = z.string().min(1).max(100);
const Password = z.string().min(1).max(256);
/** Names people will see (display names, key names, factor labels): no control or bidi-override characters. */
const Label = z
  .string()
  .trim()
  .min(1)
  .max(100)
  .regex(/^[^\p{Cc}\u202A-\u202E\u2066-\u2069]*$/u, "Must not contain control characters");
const ProviderParam = z.string().regex(/^[a-z0-9_-]{1,40}$/, "Unknown provider");

/** Request bodies of the auth routes. */
export const SignupBody = z.object({ email: Email, password: NewPassword, displayName: Label.optional() });
export type SignupBody = z.infer<typeof SignupBody>;
export const LoginBody = z.object({ email: Email, password: Password, teamId: Id.optional() });
export type LoginBody = z.infer<typeof LoginBody>;
export const MfaLoginBody = z.intersection(z.object({ challengeToken: z.string().min(1).max(200) }), MfaProof);
export type MfaLoginBody = z.infer<typeof MfaLoginBody>;
export const ChallengeBody = z.object({ challengeToken: z.string().min(1).max(200) });
export type ChallengeBody = z.infer<typeof ChallengeBody>;
export const SmsLoginBody = z.object({ challengeToken: z.string().min(1).max(200), factorId: Id });
export type SmsLoginBody = z.infer<typeof SmsLoginBody>;
export const RefreshBody = z.object({ refreshToken: z.string().min(1).max(200) });
export type RefreshBody = z.infer<typeof RefreshBody>;
export const LogoutBody = z.object({ refreshToken: z.string().min(1).max(200).optional() });
export type LogoutBody = z.infer<typeof LogoutBody>;
export const PasswordChangeBody = z.object({ currentPassword: Password, newPassword: NewPassword });
export type PasswordChangeBody = z.infer<typeof PasswordChangeBody>;
/**
 * The re-authentication field of the routes that change how an account signs in or mint a
 * credential that outlives the session: the password (required for accounts that have one; an
 * account without one signs in again instead).
 */
const ReauthPassword = z.string().max(256).optional();
export const CreateApiKeyBody = z.object({
  name: Label,
  scopes: z.array(z.string().regex(/^[a-z_]+:[a-z_]+$/, "Scopes look like `sessions:read`")).min(1).max(32),
  expiresAt: z.iso.datetime({ offset: true }).optional(),
  password: ReauthPassword,
});
export type CreateApiKeyBody = z.infer<typeof CreateApiKeyBody>;
export const TotpEnrolBody = z.object({ label: Label.optional(), password: ReauthPassword });
export type TotpEnrolBody = z.infer<typeof TotpEnrolBody>;
export const FactorCodeBody = z.object({ factorId: Id, code: z.string().min(1).max(16) });
export type FactorCodeBody = z.infer<typeof FactorCodeBody>;
export const SmsEnrolBody = z.object({ phone: z.string().min(1).max(20), password: ReauthPassword });
export type SmsEnrolBody = z.infer<typeof SmsEnrolBody>;
export const PasswordConfirmBody = z.object({ password: ReauthPassword });
export type PasswordConfirmBody = z.infer<typeof PasswordConfirmBody>;
export const WebAuthnRegisterBody = z.object({ response: WebAuthnResponse, label: Label.optional() });
export type WebAuthnRegisterBody = z.infer<typeof WebAuthnRegisterBody>;
export const OAuthCallbackQuery = z.object({ code: z.string().min(1).max(2000), state: z.string().min(1).max(200) });
export type OAuthCallbackQuery = z.infer<typeof OAuthCallbackQuery>;
export const EmailVerificationConfirmBody = z.object({ token: z.string().min(1).max(200) });
export type EmailVerificationConfirmBody = z.infer<typeof EmailVerificationConfirmBody>;
export const SignOutEverywhereBody = z.object({ includeApiKeys: z.boolean().default(false) });
export type SignOutEverywhereBody = z.infer<typeof SignOutEverywhereBody>;

const AuthRouterOptions = z
  .object({
    service: z.custom<AuthService>((v) => typeof (v as AuthService)?.login === "function", "service must come from createAuthService"),
    /** Path prefix. Default `/auth`. */
    prefix: z.string().regex(/^(\/[A-Za-z0-9._~-]+)*$/, "prefix must look like /auth").default("/auth"),
    /** Largest JSON body accepted. Default `64kb`. */
    bodyLimit: z.string().regex(/^\d+(b|kb|mb)$/).default("64kb"),
  })
  .strict();
export type AuthRouterOptions = z.input<typeof AuthRouterOptions>;

// NUL (PostgreSQL text cannot hold it) and unpaired UTF-16 surrogates (not text at all).
const INVALID_TEXT = /\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** The path of the first string in `value` that is not valid text, or undefined. */
function invalidTextAt(value: unknown, path: string[] = [], depth = 0): string[] | undefined {
  if (typeof value === "string") return INVALID_TEXT.test(value) ? path : undefined;
  if (depth > 32 || value === null || typeof value !== "object") return undefined;
  for (const [key, inner] of Object.entries(value)) {
    if (INVALID_TEXT.test(key)) return [...path, key];
    const found = invalidTextAt(inner, [...path, key], depth + 1);
    if (found) return found;
  }
  return undefined;
}

/**
 * The one gate every client input of the auth routes passes (bodies, path ids, queries): the
 * schema, then a text check on every string, so nothing the database or a log cannot hold gets
 * past the edge as anything but a 400.
 */
function parse<T extends z.ZodType>(schema: T, value: unknown): z.output<T> {
  const parsed = schema.safeParse(value ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue?.path.length ? `${issue.path.join(".")}: ` : "";
    throw new HttpError(400, "invalid_request", `${where}${issue?.message ?? "Invalid request"}`, {
      issues: parsed.error.issues.map((i) => ({ path: i.path.map(String), message: i.message })),
    });
  }
  const bad = invalidTextAt(parsed.data);
  if (bad) {
    const where = bad.length ? `${bad.join(".")}: ` : "";
    throw new HttpError(400, "invalid_request", `${where}Must be valid text without NUL characters`, { issues: [{ path: bad, message: "Invalid text" }] });
  }
  return parsed.data;
}

function metaOf(ctx: ParameterizedContext): RequestMeta {
  const userAgent = ctx.get("user-agent");
  return {
    ip: requestIp(ctx),
    userAgent: userAgent && !INVALID_TEXT.test(userAgent) ? userAgent : undefined,
    requestId: typeof ctx.state.requestId === "string" ? ctx.state.requestId : undefined,
  };
}

/**
 * Renders client errors (4xx) in the one JSON shape and lets everything else propagate to the
 * host's error handler and logger, which must see the unexpected.
 */
function renderClientErrors(): Middleware {
  const render = errorHandler();
  return async (ctx, next) => {
    let unexpected: { error: unknown } | undefined;
    await render(ctx, async () => {
      try {
        await next();
      } catch (error) {
        if (errorStatus(error) >= 500) unexpected = { error };
        else throw error;
      }
    });
    if (unexpected) throw unexpected.error;
  };
}

const oauthCookie = (provider: string) => `keen_oauth_${provider.replace(/[^a-z0-9]/g, "_")}`;

function principalOf(ctx: ParameterizedContext): Principal {
  const principal = ctx.state.principal;
  if (!principal) throw new HttpError(401, "unauthenticated", "Authentication required");
  return principal;
}

/** Account settings (password, sessions, keys, factors) need a signed-in user, not an API key. */
function userSession(ctx: ParameterizedContext): Principal & { sessionId: string } {
  const principal = principalOf(ctx);
  if (principal.via !== "jwt" || !principal.sessionId) {
    throw new HttpError(403, "forbidden", "This needs a signed-in user, not an API key");
  }
  return principal as Principal & { sessionId: string };
}

/**
 * The auth endpoints as a router a host app mounts: sign-up, two-step login, refresh, logout,
 * email verification, password change, sessions, API keys, MFA (TOTP, SMS, WebAuthn, recovery codes), OAuth and
 * the JWKS. Errors use the one `{ error: { code, message } }` shape.
 *
 * @example
 * const auth = createAuthService({ stores, keys, issuer, audience });
 * const router = authRouter({ service: auth, prefix: "/auth" });
 * app.use(router.routes()).use(router.allowedMethods());
 */
export function authRouter(input: AuthRouterOptions): Router {
  const parsed = AuthRouterOptions.safeParse(input);
  if (!parsed.success) throw new ConfigError(`Invalid authRouter options: ${z.prettifyError(parsed.error)}`);
  const { service, prefix, bodyLimit } = parsed.data;
  const router = new Router(prefix ? { prefix } : {});
  const signedIn = authenticate({ service, methods: ["jwt"] });
  const optionalUser = authenticate({ service, methods: ["jwt"], optional: true });

  router.use(renderClientErrors());
  // Every answer here is personal (tokens, keys, sessions): never stored by a browser or proxy (RFC 6749 §5.1).
  router.use(async (ctx, next) => {
    ctx.set("Cache-Control", "no-store");
    ctx.set("Pragma", "no-cache");
    await next();
  });
  router.use(bodyParser({ enableTypes: ["json"], jsonLimit: bodyLimit, encoding: "utf-8", parsedMethods: ["POST", "PUT", "PATCH", "DELETE"] }));

  router.post("/signup", async (ctx) => {
    const body = parse(SignupBody, ctx.request.body);
    ctx.status = 201;
    ctx.body = await service.signup(body, metaOf(ctx));
  });

  router.post("/login", async (ctx) => {
    ctx.body = await service.login(parse(LoginBody, ctx.request.body), metaOf(ctx));
  });

  router.post("/login/mfa", async (ctx) => {
    ctx.body = await service.completeMfaLogin(parse(MfaLoginBody, ctx.request.body), metaOf(ctx));
  });

  router.post("/login/mfa/webauthn/options", async (ctx) => {
    ctx.body = await service.webauthnLoginOptions(parse(ChallengeBody, ctx.request.body).challengeToken);
  });

  router.post("/login/mfa/sms", async (ctx) => {
    const body = parse(SmsLoginBody, ctx.request.body);
    await service.sendLoginSms(body.challengeToken, body.factorId);
    ctx.status = 202;
    ctx.body = { sent: true };
  });

  router.post("/token/refresh", async (ctx) => {
    ctx.body = await service.refresh(parse(RefreshBody, ctx.request.body).refreshToken, metaOf(ctx));
  });

  router.post("/logout", optionalUser, async (ctx) => {
    const body = parse(LogoutBody, ctx.request.body);
    await service.logout({ principal: ctx.state.principal, refreshToken: body.refreshToken }, metaOf(ctx));
    ctx.status = 204;
  });

  router.get("/me", signedIn, async (ctx) => {
    const principal = userSession(ctx);
    const user = await service.stores.users.findById(principal.userId);
    if (!user) throw new HttpError(401, "unauthenticated", "Authentication required");
    ctx.body = {
      user: { id: user.id, email: user.email, emailVerified: user.emailVerified, displayName: user.displayName },
      teamId: principal.teamId ?? null,
      permissions: principal.scopes,
      teams: await service.memberships(principal),
    };
  });

  // Proving the account's address: a token mailed to it, confirmed by the same account. A POST
  // with the token in the body, so a link scanner fetching a URL spends nothing.
  router.post("/email/verification", signedIn, async (ctx) => {
    const result = await service.requestEmailVerification(userSession(ctx), metaOf(ctx));
    ctx.status = result.sent ? 202 : 200;
    ctx.body = result;
  });

  router.post("/email/verification/confirm", signedIn, async (ctx) => {
    const body = parse(EmailVerificationConfirmBody, ctx.request.body);
    ctx.body = await service.confirmEmailVerification(userSession(ctx), body.token, metaOf(ctx));
  });

  router.post("/password", signedIn, async (ctx) => {
    const principal = userSession(ctx);
    ctx.body = await service.changePassword(principal, parse(PasswordChangeBody, ctx.request.body), metaOf(ctx));
  });

  router.post("/logout/everywhere", signedIn, async (ctx) => {
    const body = parse(SignOutEverywhereBody, ctx.request.body);
    ctx.body = await service.signOutEverywhere(userSession(ctx), body, metaOf(ctx));
  });

  router.get("/sessions", signedIn, async (ctx) => {
    ctx.body = { sessions: await service.listSessions(userSession(ctx)) };
  });

  router.delete("/sessions/:id", signedIn, async (ctx) => {
    await service.revokeSession(userSession(ctx), parse(Id, ctx.params.id), metaOf(ctx));
    ctx.status = 204;
  });

  router.post("/api-keys", signedIn, async (ctx) => {
    const principal = userSession(ctx);
    if (!principal.scopes.includes("api_keys:manage")) {
      throw new HttpError(403, "forbidden", "Missing permission api_keys:manage", { missing: "api_keys:manage" });
    }
    const body = parse(CreateApiKeyBody, ctx.request.body);
    ctx.status = 201;
    ctx.body = await service.createApiKey(
      principal,
      { name: body.name, scopes: body.scopes, expiresAt: body.expiresAt ? new Date(body.expiresAt) : undefined },
      { password: body.password },
      metaOf(ctx),
    );
  });

  router.get("/api-keys", signedIn, async (ctx) => {
    ctx.body = { apiKeys: await service.listApiKeys(userSession(ctx)) };
  });

  router.delete("/api-keys/:id", signedIn, async (ctx) => {
    await service.revokeApiKey(userSession(ctx), parse(Id, ctx.params.id), metaOf(ctx));
    ctx.status = 204;
  });

  router.get("/mfa", signedIn, async (ctx) => {
    ctx.body = await service.listFactors(userSession(ctx));
  });

  router.post("/mfa/totp", signedIn, async (ctx) => {
    const body = parse(TotpEnrolBody, ctx.request.body);
    ctx.status = 201;
    ctx.body = await service.enrolTotp(userSession(ctx), body.label, { password: body.password }, metaOf(ctx));
  });

  router.post("/mfa/totp/verify", signedIn, async (ctx) => {
    const body = parse(FactorCodeBody, ctx.request.body);
    ctx.body = await service.confirmTotp(userSession(ctx), body.factorId, body.code, metaOf(ctx));
  });

  router.post("/mfa/sms", signedIn, async (ctx) => {
    const body = parse(SmsEnrolBody, ctx.request.body);
    ctx.status = 201;
    ctx.body = await service.enrolSms(userSession(ctx), body.phone, { password: body.password }, metaOf(ctx));
  });

  router.post("/mfa/sms/verify", signedIn, async (ctx) => {
    const body = parse(FactorCodeBody, ctx.request.body);
    ctx.body = await service.confirmSms(userSession(ctx), body.factorId, body.code, metaOf(ctx));
  });

  router.post("/mfa/webauthn/register/options", signedIn, async (ctx) => {
    const body = parse(PasswordConfirmBody, ctx.request.body);
    ctx.body = await service.webauthnRegistrationOptions(userSession(ctx), { password: body.password }, metaOf(ctx));
  });

  router.post("/mfa/webauthn/register/verify", signedIn, async (ctx) => {
    const body = parse(WebAuthnRegisterBody, ctx.request.body);
    ctx.status = 201;
    ctx.body = await service.webauthnRegister(userSession(ctx), body.response, body.label, metaOf(ctx));
  });

  router.delete("/mfa/factors/:id", signedIn, async (ctx) => {
    const body = parse(PasswordConfirmBody, ctx.request.body);
    await service.removeFactor(userSession(ctx), parse(Id, ctx.params.id), body.password ?? "", metaOf(ctx));
    ctx.status = 204;
  });

  router.post("/mfa/recovery-codes", signedIn, async (ctx) => {
    const body = parse(PasswordConfirmBody, ctx.request.body);
    ctx.body = { recoveryCodes: await service.regenerateRecoveryCodes(userSession(ctx), body.password ?? "", metaOf(ctx)) };
  });

  router.get("/oauth/:provider/start", async (ctx) => {
    const provider = parse(ProviderParam, ctx.params.provider);
    if (ctx.method === "HEAD") {
      ctx.status = 204;
      return;
    }
    const { url, browserBinding, expiresInSeconds } = await service.oauthStart(provider);
    // Binds the state to this browser: HttpOnly (no script reads it), SameSite=Lax (sent on the
    // provider's top-level redirect back, not on cross-site subrequests), scoped to this provider's paths.
    ctx.cookies.set(oauthCookie(provider), browserBinding, {
      httpOnly: true,
      sameSite: "lax",
      secure: ctx.secure,
      path: `${prefix}/oauth/${provider}`,
      maxAge: expiresInSeconds * 1000,
      overwrite: true,
    });
    if (ctx.query.mode === "json") {
      ctx.body = { url };
      return;
    }
    ctx.redirect(url);
  });

  router.get("/oauth/:provider/callback", async (ctx) => {
    if (typeof ctx.query.error === "string") {
      throw new HttpError(400, "oauth_denied", "The provider did not authorise the sign-in", { reason: ctx.query.error.slice(0, 100) });
    }
    const provider = parse(ProviderParam, ctx.params.provider);
    // Link previews and prefetchers send HEAD: it must not spend the one-time state.
    if (ctx.method === "HEAD") {
      ctx.status = 204;
      return;
    }
    const query = parse(OAuthCallbackQuery, ctx.query);
    const browserBinding = ctx.cookies.get(oauthCookie(provider));
    ctx.cookies.set(oauthCookie(provider), null, { path: `${prefix}/oauth/${provider}`, httpOnly: true, sameSite: "lax", secure: ctx.secure });
    ctx.body = await service.oauthCallback(provider, { code: query.code, state: query.state, browserBinding: browserBinding || undefined }, metaOf(ctx));
  });

  router.get("/.well-known/jwks.json", async (ctx) => {
    ctx.set("Cache-Control", "public, max-age=300");
    ctx.remove("Pragma");
    ctx.body = service.keys.jwks();
  });

  return router;
}
