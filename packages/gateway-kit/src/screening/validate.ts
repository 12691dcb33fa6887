import type { Middleware } from "koa";
import * as z from "zod";
import { HttpError } from "../http-error.js";
import { ConfigError } from "../errors.js";

/** Where in the request a field-level problem was found. */
export type RequestPart = "body" | "params" | "query";

/** One field-level problem, as listed in a 400 response's `details.issues`. */
export interface FieldIssue {
  in: RequestPart;
  /** Path to the field inside that part, e.g. `["items", "0", "name"]`; empty for the part itself. */
  path: string[];
  message: string;
  /** zod's issue code, e.g. `invalid_type`, `too_small`. */
  code: string;
}

/** The schemas `validate()` checks; each is optional. */
export interface RequestSchemas<B extends z.ZodType = z.ZodType, P extends z.ZodType = z.ZodType, Q extends z.ZodType = z.ZodType> {
  body?: B;
  params?: P;
  query?: Q;
}

/** What `validate()` puts on `ctx.state.validated`: the parsed (coerced, defaulted) values. */
export interface ValidatedRequest {
  body?: unknown;
  params?: unknown;
  query?: unknown;
}

declare module "koa" {
  interface DefaultState {
    /** Parsed request parts, set by `validate()`. */
    validated?: ValidatedRequest;
  }
}

const PARTS: RequestPart[] = ["params", "query", "body"];

/**
 * Checks the request body, route params and query against zod schemas. On success the parsed
 * values (with zod's coercions and defaults applied) are on `ctx.state.validated.body`,
 * `.params` and `.query`; the raw request is left as it was. On failure it throws a 400
 * `invalid_request` listing every problem: `details.issues` is `[{ in, path, message, code }]`.
 *
 * The body must already be parsed (e.g. by `@koa/bodyparser`); params come from
 * `@koa/router`, so mount `validate()` on the route, after the path has matched.
 *
 * @example
 * router.post(
 *   "/projects/:id/runs",
 *   validate({ params: z.object({ id: z.string().uuid() }), body: z.object({ vision: z.string().min(1) }) }),
 *   async (ctx) => {
 *     const { body, params } = ctx.state.validated as { body: { vision: string }; params: { id: string } };
 *   },
 * );
 */
export function validate(schemas: RequestSchemas): Middleware {
  if (typeof schemas !== "object" || schemas === null) throw new ConfigError("validate() needs { body?, params?, query? }");
  for (const key of Object.keys(schemas)) {
    if (!PARTS.includes(key as RequestPart)) throw new ConfigError(`validate(): unknown request part "${key}" (use body, params or query)`);
    const schema = schemas[key as RequestPart];
    if (schema !== undefined && !(schema instanceof z.ZodType)) throw new ConfigError(`validate(): ${key} must be a zod schema`);
  }
  const parts = PARTS.filter((part) => schemas[part] !== undefined);
  if (parts.length === 0) throw new ConfigError("validate() needs at least one of body, params or query");

  return async (ctx, next) => {
    const issues: FieldIssue[] = [];
    const validated: ValidatedRequest = { ...ctx.state.validated };
    for (const part of parts) {
      const input = part === "body" ? (ctx.request as { body?: unknown }).body : part === "params" ? ((ctx as { params?: unknown }).params ?? {}) : { ...ctx.query };
      const result = await schemas[part]!.safeParseAsync(input);
      if (result.success) validated[part] = result.data;
      else for (const issue of result.error.issues) issues.push({ in: part, path: issue.path.map(String), message: issue.message, code: issue.code });
    }
    if (issues.length > 0) {
      const first = issues[0]!;
      const where = first.path.length ? `${first.in}.${first.path.join(".")}` : first.in;
      const more = issues.length > 1 ? ` (and ${issues.length - 1} more)` : "";
      throw new HttpError(400, "invalid_request", `${where}: ${first.message}${more}`, { issues });
    }
    ctx.state.validated = validated;
    await next();
  };
}
