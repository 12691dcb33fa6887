import { sql, type Kysely } from "kysely";
import type { DataRightsContributor } from "../privacy/index.js";

const text = (value: unknown) => (value == null ? null : String(value));
const iso = (value: unknown) => (value == null ? null : new Date(value as string | Date).toISOString());

/**
 * The spends' part in a user's data rights (`spendMigrations`).
 *
 * Export: every spend held in the user's own wallet or counted against the user's budget scope,
 * with its amounts and how it closed.
 *
 * Erasure: spends stay. They are the accounting that ties ledger entries to budget charges, and
 * they name the user only by opaque id (the ledger's and budgets' contributors decide what
 * happens to the wallet and the user's budgets).
 *
 * @example
 * await eraseUserData(db, userId, [authDataRights(), creditsDataRights, budgetsDataRights, spendDataRights]);
 */
export const spendDataRights: DataRightsContributor = {
  name: "spend",
  async export(db: Kysely<any>, userId: string) {
    // Scopes are stored as a JSON array of { kind, id } objects.
    const scope = `%${JSON.stringify({ kind: "user", id: userId }).replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
    const { rows } = await sql<Record<string, unknown>>`
      select s.* from spends s
      where s.scopes like ${scope}
         or s.account_id in (select id from ledger_accounts where kind = 'user_wallet' and owner_id = ${userId})
      order by s.created_at, s.id`.execute(db);
    return {
      spends: rows.map((row) => ({
        handle: row.id,
        accountId: row.account_id,
        scopes: JSON.parse(String(row.scopes)),
        estimate: text(row.estimate),
        status: row.status,
        actual: text(row.actual),
        charged: text(row.charged),
        released: text(row.released),
        shortfall: text(row.shortfall),
        reference: row.reference,
        createdAt: iso(row.created_at),
        closedAt: iso(row.closed_at),
      })),
    };
  },
  async erase() {
    // Nothing personal beyond opaque ids; see above.
  },
};
