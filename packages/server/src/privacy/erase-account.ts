import { rm } from "node:fs/promises";
import { resolve } from "node:path";
import {
  auditDataRights,
  AuthError,
  authDataRights,
  billingDataRights,
  budgetsDataRights,
  creditsDataRights,
  eraseUserData,
  spendDataRights,
  type DataRightsContributor,
  type EraseUserDataOptions,
  type UserErasureReport,
} from "@keen/gateway-kit";
import type { Kysely } from "kysely";
import type { ServerConfig } from "../config.js";
import { ServerError } from "../errors.js";
import { serverDataRights } from "./server-data-rights.js";

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
