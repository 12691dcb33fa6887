import type { Router } from "@koa/router";
import { exportUserData, validate, type AuthService, type Principal } from "@keen/gateway-kit";
import type { Kysely } from "kysely";
import type { ParameterizedContext } from "koa";
import type * as z from "zod";
import type { ServerConfig } from "../config.js";
import type { ServerTables } from "../db/tables.js";
import type { OpenStream } from "../events/stream.js";
import { ServerError } from "../errors.js";
import { EraseAccountBody } from "./privacy-input.js";
import { dataRightsContributors, eraseAccount, refuseErasure } from "./erase-account.js";
import { jsonBody } from "../http/json-body.js";
import { requireReauthentication } from "../http/reauth.js";

function signedInUser(ctx: ParameterizedContext): Principal & { sessionId: string } {
  const principal = ctx.state.principal;
  if (!principal) throw new ServerError("forbidden", "Authentication required");
  if (principal.via !== "jwt" || !principal.sessionId) throw new ServerError("forbidden", "This needs a signed-in user, not an API key");
  return principal as Principal & { sessionId: string };
}

/**
 * Data rights through gateway-kit's privacy module.
 *
 * `POST /v1/me/export` answers at once with the archive as a JSON download
 * (`Content-Disposition: attachment`), read in one repeatable-read transaction.
 *
 * `DELETE /v1/me` erases the account after re-authentication, the same `requireReauthentication`
 * as every other step-up route (the password, or a sign-in within 10 minutes for an account
 * without one; missing: 401 `reauthentication_required`, wrong: 403 `invalid_password`, counted
 * by the login limiter). It is refused while the caller is the only owner of a
 * team others belong to (409 `last_owner`) or has a queued or running run (409
 * `run_not_finished`); both are decided again under locks inside the erasure's transaction.
 * In ONE transaction, which first takes the user's row `FOR UPDATE` (every request that creates
 * something for the user takes it `FOR SHARE` and answers 410 `account_erased` once the user is
 * erased), every contributor erases or anonymises its part: sessions, refresh tokens and API keys
 * are deleted (so every credential stops working at once; this process's key cache is dropped
 * and the user's open SSE and WebSocket streams are ended too), runs with their events, uploads,
 * preferences, the user's webhook endpoints and the webhook messages about their runs are
 * deleted, the ledger keeps its totals and the audit chain its hashes. The user's workspace
 * folder is removed afterwards.
 */
export function mountPrivacyRoutes(router: Router, deps: { db: Kysely<ServerTables>; auth: AuthService; config: ServerConfig; streams?: Set<OpenStream> }): void {
  const { auth, config } = deps;
  const db = deps.db as Kysely<any>;
  // The confirmation travels in the DELETE's body, which the parser skips unless told.
  const json = jsonBody({ limit: 2 * 1024, methods: ["DELETE"] });

  router.post("/me/export", async (ctx) => {
    const principal = signedInUser(ctx);
    const archive = await exportUserData(db, principal.userId, dataRightsContributors());
    ctx.set("Content-Disposition", `attachment; filename="keen-user-data-${principal.userId}.json"`);
    ctx.set("Cache-Control", "no-store");
    ctx.body = archive;
  });

  router.delete("/me", json, validate({ body: EraseAccountBody }), async (ctx) => {
    const principal = signedInUser(ctx);
    const { password } = ctx.state.validated!.body as z.output<typeof EraseAccountBody>;
    const user = await auth.stores.users.findById(principal.userId);
    if (!user) throw new ServerError("not_found", "User not found");
    // The refusals first, so a refused erasure has not also signed the user in again.
    await refuseErasure(db, user.id);

    // The one step-up check of every such route: the password through the login limiter, or for
    // an account without one a sign-in at most `reauthMaxAgeSeconds` old.
    await requireReauthentication(auth, ctx, password);

    const report = await eraseAccount(db, config, user.id, {
      recordIn: { tenantId: null, actorId: user.id, requestId: ctx.state.requestId ?? null },
      onWorkspaceError: (error) => ctx.state.log?.warn({ err: error }, "workspace removal after erasure failed"),
    });
    auth.evictUser(user.id);
    // Streams the user opened end now, not at their next credential check.
    for (const open of deps.streams ?? []) if (open.userId === user.id) open.revoke();
    // The request's own audit line must not name the user it just erased.
    delete ctx.state.principal;
    ctx.body = { erased: true, userId: user.id, erasedAt: report.erasedAt, contributors: report.contributors };
  });
}
