// The mounting order the screening docs recommend, as a program: redaction app-wide, the auth
// router wrapped so the secrets it returns to their owner pass, and the rest of the API behind
// it with everything masked. docs/gateway-kit-screening-audit.md shows this file; the test next
// to it runs it against a real auth service.
import { bodyParser } from "@koa/bodyparser";
import type { Router } from "@koa/router";
import Koa from "koa";
import { authenticate, authRouter, type AuthService } from "../../auth/index.js";
import { errorHandler } from "../../http-error.js";
import { ownerSecrets, redactResponses } from "../redact.js";

export interface RedactedAppOptions {
  service: AuthService;
  /** The API's own routes, mounted after authentication. */
  api: Router;
}

/**
 * A Koa app with `redactResponses()` mounted app-wide that still hands out login tokens and new
 * API keys: `ownerSecrets()` marks the auth router's token fields while it handles a request.
 *
 * @example
 * const app = createRedactedApp({ service: auth, api: projectsRouter });
 * app.listen(3000);
 */
export function createRedactedApp({ service, api }: RedactedAppOptions): Koa {
  const app = new Koa();
  app.use(errorHandler());
  app.use(redactResponses());
  app.use(ownerSecrets(authRouter({ service, prefix: "/auth" }).routes()));
  app.use(bodyParser({ enableTypes: ["json"] }));
  app.use(authenticate({ service }));
  app.use(api.routes());
  return app;
}
