import type { Router } from "@koa/router";
import { requireScope, validate, type AuthService, type Principal } from "@keen/gateway-kit";
import type { ParameterizedContext } from "koa";
import { ServerError } from "../errors.js";
import { RUN_SCOPES } from "../runs/routes.js";
import { CreateWebhookBody, ListDeliveriesQuery } from "./webhook-input.js";
import type { WebhookService } from "./webhook-service.js";
import { jsonBody } from "../http/json-body.js";
import { requireReauthentication } from "../http/reauth.js";

function principalOf(ctx: ParameterizedContext): Principal {
  const principal = ctx.state.principal;
  if (!principal) throw new ServerError("forbidden", "Authentication required");
  return principal;
}

/**
 * The webhook routes on the authenticated `/v1` router. Endpoints receive the team's run
 * results, so they take the same scopes as runs: reading needs `sessions:read`, registering and
 * deleting `sessions:write`. Registering sends every later run's results to a URL of the
 * caller's choosing, which outlives the caller's session, so it also re-authenticates like
 * minting an API key (see http/reauth.ts): a signed-in user with the password, never an API key.
 */
export function mountWebhookRoutes(router: Router, deps: { webhooks: WebhookService; auth: AuthService }): void {
  const { webhooks, auth } = deps;
  const json = jsonBody({ limit: 16 * 1024 });

  router.post("/webhooks", requireScope(RUN_SCOPES.write), json, validate({ body: CreateWebhookBody }), async (ctx) => {
    const { password, ...body } = ctx.state.validated!.body as CreateWebhookBody;
    const principal = principalOf(ctx);
    await requireReauthentication(auth, ctx, password);
    const created = await webhooks.register(principal, body);
    ctx.status = 201;
    ctx.set("Location", `/v1/webhooks/${created.id}`);
    ctx.body = created;
  });

  router.get("/webhooks", requireScope(RUN_SCOPES.read), async (ctx) => {
    ctx.body = await webhooks.list(principalOf(ctx));
  });

  router.delete("/webhooks/:id", requireScope(RUN_SCOPES.write), async (ctx) => {
    ctx.body = await webhooks.remove(principalOf(ctx), ctx.params.id!);
  });

  router.get("/webhooks/:id/deliveries", requireScope(RUN_SCOPES.read), validate({ query: ListDeliveriesQuery }), async (ctx) => {
    ctx.body = await webhooks.deliveries(principalOf(ctx), ctx.params.id!, ctx.state.validated!.query as ListDeliveriesQuery);
  });
}
