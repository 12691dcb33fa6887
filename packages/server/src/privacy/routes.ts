import { rm } from "node:fs/promises";
import { resolve } from "node:path";
import type { Router } from "@koa/router";
import {
  auditDataRights,
  AuthError,
  authDataRights,
  billingDataRights,
  budgetsDataRights,
  creditsDataRights,
  eraseUserData,
  exportUserData,
  GatewayError,
  spendDataRights,
  validate,
  type AuthService,
  type DataRightsContributor,
  type EraseUserDataOptions,
  type Principal,
  type UserErasureReport,
} from "@keen/gateway-kit";
import type { Kysely } from "kysely";
import type { ParameterizedContext } from "koa";
import type { z } from "zod";
import type { ServerConfig } from "../config.js";
import type { ServerTables } from "../db/tables.js";
import { ServerError } from "../errors.js";
import { EraseAccountBody } from "./privacy-input.js";
import { serverDataRights } from "./server-data-rights.js";
import { jsonBody } from "../http/json-body.js";

/** Every module that holds personal data; the server's own first, while the user's email is still there. */
export function dataRightsContributors(): DataRightsContributor[] {
  return [serverDataRights, authDataRights(), auditDataRights(), creditsDataRights, billingDataRights, budgetsDataRights, spendDataRights];
}

/**
 * Why an account may not be erased now: it is the only owner of a team others belong to (409
 * `last_owner`), or one of its runs is queued or running (409 `run_not_finished`). Checked
 * before anything else an erasure does; `serverDataRights` checks the runs again inside the
 * erasure's transaction.
 */
export async function refuseErasure(db: Kysely<any>, userId: string): Promise<void> {
  const owned = await db.selectFrom("memberships").select("team_id").where("user_id", "=", userId).where("role", "=", "owner").execute();
  for (const { team_id: teamId } of owned) {
    const others = await db.selectFrom("memberships").select(["user_id", "role"]).where("team_id", "=", teamId).where("user_id", "!=", userId).execute();
    if (others.length > 0 && !others.some((m) => m.role === "owner")) {
      throw new AuthError("last_owner", `You are the only owner of team ${teamId}: make another member an owner first`);
    }
  }
  const active = await db.selectFrom("runs").select("id").where("user_id", "=", userId).where("status", "in", ["queued", "running"]).limit(1).executeTakeFirst();
  if (active) throw new ServerError("run_not_finished", `Run ${active.id} is still going: cancel it first`, { runId: active.id });
}

/**
 * The one account erasure, for `DELETE /v1/me` and `keen admin remove-user`: every contributor
 * in one transaction (gateway-kit's `eraseUserData`, recorded in the audit log as
 * `privacy.erase`), then the user's workspace folder. Call `refuseErasure` first.
 */
export async function eraseAccount(
  db: Kysely<any>,
  config: Pick<ServerConfig, "workspacesDir">,
  userId: string,
  options: { recordIn: EraseUserDataOptions["recordIn"]; onWorkspaceError?: (error: unknown) => void },
): Promise<UserErasureReport> {
  const report = await eraseUserData(db, userId, dataRightsContributors(), { recordIn: options.recordIn });
  if (/^[A-Za-z0-9_-]{1,100}$/.test(userId)) {
    await rm(resolve(config.workspacesDir, userId), { recursive: true, force: true }).catch((error) => options.onWorkspaceError?.(error));
  }
  return report;
}

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
 * `DELETE /v1/me` erases the account after re-authentication (the password, or a sign-in within
 * 10 minutes for an account without one). It is refused while the caller is the only owner of a
 * team others belong to (409 `last_owner`) or has a queued or running run (409
 * `run_not_finished`). In ONE transaction every contributor erases or anonymises its part:
 * sessions, refresh tokens and API keys are deleted (so every credential stops working at once;
 * this process's key cache is dropped too), runs with their events, uploads and preferences are
 * deleted, the ledger keeps its totals and the audit chain its hashes. The user's workspace
 * folder is removed afterwards.
 */
export function mountPrivacyRoutes(router: Router, deps: { db: Kysely<ServerTables>; auth: AuthService; config: ServerConfig }): void {
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

    // gateway-kit's one re-authentication check: the password through its login limiter, or for
    // an account without one a sign-in at most `reauthMaxAgeSeconds` old.
    try {
      await auth.reauthenticate(principal, password ? { password } : {}, { ip: ctx.ip, userAgent: ctx.get("user-agent") || undefined, requestId: ctx.state.requestId });
    } catch (error) {
      if (error instanceof GatewayError && error.code === "invalid_password") throw new ServerError("reauthentication_required", "The password is not correct");
      throw error;
    }

    const report = await eraseAccount(db, config, user.id, {
      recordIn: { tenantId: null, actorId: user.id, requestId: ctx.state.requestId ?? null },
      onWorkspaceError: (error) => ctx.state.log?.warn({ err: error }, "workspace removal after erasure failed"),
    });
    auth.evictUser(user.id);
    // The request's own audit line must not name the user it just erased.
    delete ctx.state.principal;
    ctx.body = { erased: true, userId: user.id, erasedAt: report.erasedAt, contributors: report.contributors };
  });
}
