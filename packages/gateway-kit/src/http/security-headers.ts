import { ConfigError } from "../errors.js";
import type { Middleware } from "koa";
import * as z from "zod";
import { HttpError } from "../http-error.js";

/** Options of `securityHeaders()`. */
export const SecurityHeadersOptions = z
  .object({
    /** `Strict-Transport-Security` max-age for requests that arrived over HTTPS; 0 omits the header. Default one year. */
    hstsMaxAgeSeconds: z.number().int().min(0).max(63_072_000).default(31_536_000),
    /** `Content-Security-Policy`. The default suits a JSON API: nothing may load, nothing may frame it. */
    contentSecurityPolicy: z.string().min(1).max(4096).default("default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
  })
  .strict();
export type SecurityHeadersOptions = z.input<typeof SecurityHeadersOptions>;

/**
 * Sets the response headers an API should always send: no MIME sniffing, no framing, no
 * referrer, a locked-down CSP, same-origin isolation, and HSTS on HTTPS requests. Mount it
 * first so error responses carry them too. (Serving HTML pages? Pass your own
 * `contentSecurityPolicy`, or use koa-helmet.)
 *
 * @example
 * app.use(securityHeaders());
 * app.use(errorHandler({ onUnexpected: (e) => logger.error(e) }));
 */
export function securityHeaders(input: SecurityHeadersOptions = {}): Middleware {
  const parsed = SecurityHeadersOptions.safeParse(input);
  if (!parsed.success) throw new ConfigError(`Invalid securityHeaders options: ${z.prettifyError(parsed.error)}`);
  const { hstsMaxAgeSeconds, contentSecurityPolicy } = parsed.data;
  return async (ctx, next) => {
    ctx.set({
      "X-Content-Type-Options": "nosniff",
      "X-Frame-Options": "DENY",
      "Referrer-Policy": "no-referrer",
      "Content-Security-Policy": contentSecurityPolicy,
      "Cross-Origin-Opener-Policy": "same-origin",
      "Cross-Origin-Resource-Policy": "same-origin",
    });
    if (ctx.secure && hstsMaxAgeSeconds > 0) ctx.set("Strict-Transport-Security", `max-age=${hstsMaxAgeSeconds}; includeSubDomains`);
    await next();
  };
}

/**
 * Anything no route answered becomes a JSON 404 in the one error shape, instead of Koa's
 * plain-text "Not Found". Mount it after `errorHandler()` and before your routers, so it sees
 * what they (and `allowedMethods()`, which answers 405) left unanswered.
 *
 * @example
 * app.use(errorHandler());
 * app.use(jsonNotFound());
 * app.use(api.routes()).use(api.allowedMethods());
 */
export function jsonNotFound(): Middleware {
  return async (ctx, next) => {
    await next();
    if (ctx.status === 404 && ctx.body === undefined) throw new HttpError(404, "not_found", `No route for ${ctx.method} ${ctx.path}`);
  };
}
