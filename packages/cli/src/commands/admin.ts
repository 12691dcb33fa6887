import { accountEmail, removeSquattingAccount, ServerError, verifyAccountEmail, withServerDatabase } from "@keen/server";
import { UsageError, type Io } from "../cli-error.js";
import { asUsageError, parseServerFlags } from "./serve.js";

export const ADMIN_HELP = `Usage: keen admin verify-email <email> [--database-url URL | --data-dir DIR]
       keen admin remove-user <email>  [--database-url URL | --data-dir DIR]

Server accounts, for the server's operator. Takes the same settings as keen serve (the same
database, and KEEN_ADMIN_EMAILS).

  verify-email   mark the account's email address verified: you vouch that its holder owns the
                 address. An address listed in KEEN_ADMIN_EMAILS gives admin rights only once
                 it is verified.
  remove-user    erase an account that signed up with an address it never verified (someone
                 squatting it), the same erasure as DELETE /v1/me, so the address's owner can
                 sign up with it. An account with a verified address is left alone.

Both are recorded in the audit log (admin.verify_email; privacy.erase and admin.remove_user).`;

const ACTIONS = ["verify-email", "remove-user"] as const;

/** A domain refusal the operator can act on is one line; a bad address is a usage error (exit 2). */
function asOperatorError(error: unknown): never {
  if (error instanceof ServerError && error.code === "invalid_request") throw new UsageError(error.message);
  asUsageError(error);
}

export async function adminCommand(argv: string[], io: Io): Promise<number> {
  const { flags, help, positionals } = parseServerFlags(argv, "admin", { allowPositionals: true });
  if (help) {
    io.stdout(`${ADMIN_HELP}\n`);
    return 0;
  }
  const [action, email, ...extra] = positionals;
  if (!action || !(ACTIONS as readonly string[]).includes(action)) {
    throw new UsageError(`${action ? `unknown admin action "${action}"` : "an admin action is needed"}: ${ACTIONS.join(" or ")} (see keen admin --help)`);
  }
  if (!email) throw new UsageError(`keen admin ${action} needs the account's email address`);
  if (extra.length > 0) throw new UsageError(`keen admin ${action} takes one email address, not ${extra.length + 1}`);
  // A malformed address is refused before the database is opened.
  try {
    accountEmail(email);
  } catch (error) {
    asOperatorError(error);
  }

  if (action === "verify-email") {
    const result = await withServerDatabase({ env: io.env, flags }, (db, config) => verifyAccountEmail(db, config, email)).catch(asOperatorError);
    const state = result.alreadyVerified ? "was already verified" : "is now verified";
    io.stdout(`${result.email} (user ${result.userId}) ${state}; ${result.admin ? "it is a server admin (listed in KEEN_ADMIN_EMAILS)" : "it is not listed in KEEN_ADMIN_EMAILS, so no admin"}\n`);
    return 0;
  }
  const report = await withServerDatabase({ env: io.env, flags }, (db, config) => removeSquattingAccount(db, config, email)).catch(asOperatorError);
  io.stdout(`erased user ${report.userId} (${report.contributors.join(", ")}); ${accountEmail(email)} is free to sign up with again\n`);
  return 0;
}
