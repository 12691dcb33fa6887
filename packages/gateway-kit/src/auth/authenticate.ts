import { ConfigError } from "../errors.js";
import type { Middleware, ParameterizedContext } from "koa";
import * as z from "zod";
import { HttpError } from "../http-error.js";
import type { Principal } from "../principal.js";
import { looksLikeApiKey } from "./api-keys.js";
import type { AuthService } from "./auth-service.js";
import { Permission } from "./permissions.js";

const AuthenticateOptions = z
  .object({
    service: z.custom<AuthService>((v) => typeof (v as AuthService)?.verifyApiKey === "function", "service must come from createAuthService"),
    /** Credentials accepted. Default both. */
    methods: z.array(z.enum(["jwt", "api_key"])).min(1).default(["jwt", "api_key"]),
    /** When true, requests without credentials pass through with no principal. Bad credentials still fail. */
    optional: z.boolean().default(false),
  })
  .strict();
export type AuthenticateOptions = z.input<typeof AuthenticateOptions>;

function options<T extends z.ZodType>(schema: T, value: unknown, name: string): z.output<T> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new ConfigError(`Invalid ${name} options: ${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

const challenge = { "WWW-Authenticate": 'Bearer realm="keen"' };

/** Reads the credential from `Authorization: Bearer …` or `X-API-Key`. */
function credentialOf(ctx: ParameterizedContext): string | undefined {
  const header = ctx.get("authorization");
  if (header) {
    const match = /^Bearer[ ]+([^\s]+)\s*$/i.exec(header);
    if (!match) throw new HttpError(401, "invalid_authorization", "Authorization header must be `Bearer <token>`", undefined, challenge);
    return match[1];
  }
  const apiKey = ctx.get("x-api-key");
  return apiKey ? apiKey.trim() : undefined;
}

/**
 * Authenticates a request by a Bearer JWT access token or an API key (`Bearer keen_…` or
 * `X-API-Key`) and puts the principal on `ctx.state.principal`. Missing or bad credentials get
 * 401 with a typed error body.
 *
 * @example
 * const auth = createAuthService({ ... });
 * router.get("/v1/sessions", authenticate({ service: auth }), requireScope("sessions:read"), listSessions);
 */
export function authenticate(input: AuthenticateOptions): Middleware {
  const { service, methods, optional } = options(AuthenticateOptions, input, "authenticate");
  const allowJwt = methods.includes("jwt");
  const allowKey = methods.includes("api_key");
  return async (ctx, next) => {
    const credential = credentialOf(ctx);
    if (!credential) {
      if (optional) return next();
      throw new HttpError(401, "unauthenticated", "Authentication required", undefined, challenge);
    }
    let principal: Principal;
    if (looksLikeApiKey(credential) || credential.startsWith("keen_")) {
      if (!allowKey) throw new HttpError(401, "unauthenticated", "API keys are not accepted here", undefined, challenge);
      principal = await service.verifyApiKey(credential);
    } else {
      if (!allowJwt) throw new HttpError(401, "unauthenticated", "Access tokens are not accepted here", undefined, challenge);
      principal = await service.verifyAccessToken(credential);
    }
    ctx.state.principal = principal;
    await next();
  };
}

const SCOPE = /^[a-z][a-z0-9_.-]*(:[a-z0-9_.*-]+)*$/;

function requirePrincipal(ctx: ParameterizedContext): Principal {
  const principal = ctx.state.principal;
  if (!principal) throw new HttpError(401, "unauthenticated", "Authentication required", undefined, challenge);
  return principal;
}

/**
 * Lets a request through only when the principal holds every scope named. For API keys these
 * are the key's scopes narrowed by the owner's role; for access tokens, the role's permissions.
 * A missing scope gets 403 `insufficient_scope` naming it.
 *
 * @example
 * router.post("/v1/sessions", authenticate({ service }), requireScope("sessions:write"), createSession);
 */
export function requireScope(...scopes: string[]): Middleware {
  if (scopes.length === 0) throw new ConfigError("requireScope needs at least one scope");
  for (const scope of scopes) {
    if (typeof scope !== "string" || !SCOPE.test(scope)) throw new ConfigError(`Invalid scope ${JSON.stringify(scope)}`);
  }
  return async (ctx, next) => {
    const principal = requirePrincipal(ctx);
    const held = new Set(principal.scopes);
    const missing = scopes.find((s) => !held.has(s));
    if (missing) {
      throw new HttpError(403, "insufficient_scope", `Missing scope ${missing}`, { missing, required: scopes }, {
        "WWW-Authenticate": `Bearer error="insufficient_scope", scope="${scopes.join(" ")}"`,
      });
    }
    await next();
  };
}

/**
 * Lets a request through only when the principal has every named permission in its current
 * team. Permission names are checked when the middleware is created, so a typo fails at start-up.
 * A denial is 403 `forbidden` naming the missing permission.
 *
 * @example
 * router.post("/v1/team/members", authenticate({ service }), requirePermission("team:manage"), addMember);
 */
export function requirePermission(...permissions: Permission[]): Middleware {
  if (permissions.length === 0) throw new ConfigError("requirePermission needs at least one permission");
  for (const permission of permissions) {
    if (!Permission.safeParse(permission).success) {
      throw new ConfigError(`Unknown permission ${JSON.stringify(permission)}; known: ${Permission.options.join(", ")}`);
    }
  }
  return async (ctx, next) => {
    const principal = requirePrincipal(ctx);
    const held = new Set(principal.teamId ? principal.scopes : []);
    const missing = permissions.find((p) => !held.has(p));
    if (missing) throw new HttpError(403, "forbidden", `Missing permission ${missing}`, { missing });
    await next();
  };
}

/**
 * Loads a resource within the principal's tenant, or throws 404. The loader gets the team id to
 * scope its query by; a returned object with a different `teamId` is treated as missing too,
 * so another tenant's resource is never revealed to exist.
 *
 * @example
 * const run = await loadInTenant(ctx.state.principal, (teamId) =>
 *   db.selectFrom("runs").selectAll().where("id", "=", ctx.params.id).where("team_id", "=", teamId).executeTakeFirst(),
 * "Session");
 */
export async function loadInTenant<T>(
  principal: Principal | undefined,
  load: (teamId: string) => Promise<T | undefined | null>,
  what = "Resource",
): Promise<T> {
  if (!principal) throw new HttpError(401, "unauthenticated", "Authentication required", undefined, challenge);
  const notFound = new HttpError(404, "not_found", `${what} not found`);
  if (!principal.teamId) throw notFound;
  const resource = await load(principal.teamId);
  if (resource === undefined || resource === null) throw notFound;
  const owner = (resource as { teamId?: unknown; team_id?: unknown }).teamId ?? (resource as { team_id?: unknown }).team_id;
  if (owner !== undefined && owner !== principal.teamId) throw notFound;
  return resource;
}
