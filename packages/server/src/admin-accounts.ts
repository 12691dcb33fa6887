import { createAuditLog, createKyselyAuthStores, Email, type UserErasureReport, type UserRecord } from "@keen/gateway-kit";
import type { Kysely } from "kysely";
import { isAdminUser } from "./admins.js";
import type { ServerConfig } from "./config.js";
import { migrateServer } from "./db/migrations.js";
import { openServerDatabase } from "./db/open.js";
import { ServerError } from "./errors.js";
import { eraseAccount, refuseErasure } from "./privacy/erase-account.js";
import type { StartOptions } from "./start.js";

/** How the operator's acts appear in the audit log: a system actor, named in `details.via`. */
const OPERATOR = { tenantId: null, actorId: null, requestId: null } as const;

/**
 * An account's address as the auth store keeps it (normalised); 400 `invalid_request` when it is
 * no address at all.
 *
 * @example
 * accountEmail("  Ops@Example.com "); // "ops@example.com"
 */
export function accountEmail(email: string): string {
  const parsed = Email.safeParse(email);
  if (!parsed.success) throw new ServerError("invalid_request", `"${email}" is not an email address`);
  return parsed.data;
}

async function userByEmail(db: Kysely<any>, email: string): Promise<UserRecord> {
  const address = accountEmail(email);
  const user = await createKyselyAuthStores(db).users.findByEmail(address);
  if (!user) throw new ServerError("not_found", `No account has the email ${address}`);
  return user;
}

export interface VerifiedEmail {
  userId: string;
  email: string;
  /** The address was verified already; nothing changed. */
  alreadyVerified: boolean;
  /** The account is a server admin now (its email is listed in `adminEmails`). */
  admin: boolean;
}

/**
 * Marks an account's email verified, as `keen admin verify-email` does: the operator vouches that
 * the account's holder owns the address. A listed admin address counts from then on (see
 * admins.ts). Recorded in the audit log as `admin.verify_email` (target `user:<id>`).
 *
 * @example
 * await verifyAccountEmail(db, config, "ops@example.com"); // { userId, email, alreadyVerified: false, admin: true }
 */
export async function verifyAccountEmail(db: Kysely<any>, config: Pick<ServerConfig, "adminEmails">, email: string): Promise<VerifiedEmail> {
  return db.transaction().execute(async (trx) => {
    const user = await userByEmail(trx, email);
    if (!user.emailVerified) {
      await createKyselyAuthStores(trx).users.markEmailVerified(user.id);
      await createAuditLog(trx).append({ ...OPERATOR, action: "admin.verify_email", target: `user:${user.id}`, result: "success", details: { via: "keen admin verify-email" } });
    }
    return { userId: user.id, email: user.email, alreadyVerified: user.emailVerified, admin: isAdminUser({ ...user, emailVerified: true }, config.adminEmails) };
  });
}

/**
 * Erases an account that holds an address without having proved it, as `keen admin
 * remove-user` does, so the address's owner can sign up with it. The erasure is the one
 * `DELETE /v1/me` does (same refusals: `last_owner`, `run_not_finished`; same contributors;
 * recorded as `privacy.erase`), plus an `admin.remove_user` audit record. An account whose
 * address is verified is refused (409 `account_verified`): its holder proved the address, and
 * erases it themselves.
 *
 * @example
 * await removeSquattingAccount(db, config, "ops@example.com"); // { userId, erasedAt, contributors }
 */
export async function removeSquattingAccount(db: Kysely<any>, config: Pick<ServerConfig, "workspacesDir">, email: string): Promise<UserErasureReport> {
  const user = await userByEmail(db, email);
  if (user.emailVerified) {
    throw new ServerError("account_verified", `The account ${user.id} verified ${user.email}: it is not squatting the address, and is left alone`);
  }
  await refuseErasure(db, user.id);
  const report = await eraseAccount(db, config, user.id, { recordIn: OPERATOR });
  await createAuditLog(db).append({ ...OPERATOR, action: "admin.remove_user", target: `user:${user.id}`, result: "success", details: { via: "keen admin remove-user", reason: "email_unverified" } });
  return report;
}

/**
 * Opens the server's database from env and flags (the settings `keen serve` takes), brings it
 * up to date, runs `act` and closes it: for the operator's commands.
 *
 * @example
 * await withServerDatabase({ env: process.env }, (db, config) => verifyAccountEmail(db, config, "ops@example.com"));
 */
export async function withServerDatabase<T>(options: Pick<StartOptions, "env" | "flags">, act: (db: Kysely<any>, config: ServerConfig) => Promise<T>): Promise<T> {
  const { config, database } = await openServerDatabase(options);
  try {
    await migrateServer(database.db);
    return await act(database.db as Kysely<any>, config);
  } finally {
    await database.close();
  }
}
