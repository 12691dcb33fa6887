import { erasedEmail } from "@keen/gateway-kit";
import type { Kysely } from "kysely";
import { ServerError } from "../errors.js";

/**
 * Takes the user's row `FOR SHARE` inside the transaction `trx` and throws 410 `account_erased`
 * when the user is gone or erased. Every path that creates something for a user (a run, a
 * resume, an upload, a webhook, an API key, a membership, a checkout) calls it in the same
 * transaction that writes, and the erasure takes the same row `FOR UPDATE` first: so either
 * the write commits before the erasure starts (and the erasure sees it and removes it, or
 * refuses, as for a queued run), or the erasure commits first and the write is refused. A check
 * made outside the writing transaction would leave a window between the two.
 *
 * @example
 * await db.transaction().execute(async (trx) => {
 *   await lockLiveUser(trx, principal.userId);
 *   await trx.insertInto("webhooks").values(row).execute();
 * });
 */
export async function lockLiveUser(trx: Kysely<any>, userId: string): Promise<void> {
  const user = await trx.selectFrom("users").select(["id", "email"]).where("id", "=", userId).forShare().executeTakeFirst();
  assertNotErased(userId, user);
}

/** Throws 410 `account_erased` when the user row read for `userId` is gone or holds an erased account. */
export function assertNotErased(userId: string, user: { email: string } | undefined): void {
  if (!user || user.email === erasedEmail(userId)) throw new ServerError("account_erased", "This account has been erased");
}

/**
 * Takes the user's row `FOR UPDATE`: the erasure's first step, so that every `lockLiveUser`
 * waits for it and then sees the user erased.
 */
export async function lockUserForErasure(trx: Kysely<any>, userId: string): Promise<boolean> {
  return (await trx.selectFrom("users").select("id").where("id", "=", userId).forUpdate().executeTakeFirst()) !== undefined;
}

/** Whether `error` is the refusal `lockLiveUser` throws. */
export const isAccountErased = (error: unknown): boolean => error instanceof ServerError && error.code === "account_erased";
