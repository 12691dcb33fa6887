import { rm } from "node:fs/promises";
import { resolve } from "node:path";
import {
  auditDataRights,
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
import { erasureRefusal, serverDataRights } from "./server-data-rights.js";

/** Every module that holds personal data; the server's own first, while the user's email is still there. */
export function dataRightsContributors(): DataRightsContributor[] {
  return [serverDataRights, authDataRights(), auditDataRights(), creditsDataRights, billingDataRights, budgetsDataRights, spendDataRights];
}

/**
 * Why an account may not be erased now: it is the only owner of a team others belong to (409
 * `last_owner`), or one of its runs is queued or running (409 `run_not_finished`). Checked
 * before anything else an erasure does (before the password); `serverDataRights` decides both
 * again under locks inside the erasure's transaction.
 */
export async function refuseErasure(db: Kysely<any>, userId: string): Promise<void> {
  const refusal = await erasureRefusal(db, userId, { locked: false });
  if (refusal) throw refusal;
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
