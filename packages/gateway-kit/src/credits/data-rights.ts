import type { Kysely } from "kysely";
import type { DataRightsContributor } from "../privacy/index.js";
import type { CreditTables } from "./tables.js";

const text = (value: unknown) => (value == null ? null : String(value));
const iso = (value: unknown) => (value == null ? null : new Date(value as string | Date).toISOString());

/**
 * The credits ledger's part in a user's data rights.
 *
 * `export` returns the user's wallets and holds with balances, every entry on them and every
 * reservation. Amounts are decimal strings of micro-credits, so the archive round-trips exactly.
 *
 * `erase` keeps every ledger row: they are financial records a business must retain, and they
 * hold no personal data (owners are opaque user ids, references are opaque run ids). Erasing the
 * user elsewhere leaves the ledger balanced and pointing at an id nothing else can resolve.
 *
 * @example
 * const archive = { credits: await creditsDataRights.export(db, userId) };
 */
export const creditsDataRights: DataRightsContributor = {
  name: "credits",
  async export(db: Kysely<any>, userId: string) {
    const ledger = db as Kysely<CreditTables>;
    const wallets = await ledger.selectFrom("ledger_accounts").selectAll().where("kind", "=", "user_wallet").where("owner_id", "=", userId).orderBy("id").execute();
    const walletIds = wallets.map((w) => w.id);
    if (walletIds.length === 0) return { accounts: [], entries: [], reservations: [] };
    const holds = await ledger.selectFrom("ledger_accounts").selectAll().where("wallet_id", "in", walletIds).orderBy("id").execute();
    const accountIds = [...walletIds, ...holds.map((h) => h.id)];
    const entries = await ledger
      .selectFrom("ledger_entries as e")
      .innerJoin("ledger_transactions as t", "t.id", "e.transaction_id")
      .select(["e.id", "e.transaction_id", "e.account_id", "e.amount", "e.created_at", "t.kind", "t.reservation_id", "t.operation_key"])
      .where("e.account_id", "in", accountIds)
      .orderBy("e.id")
      .execute();
    const reservations = await ledger.selectFrom("ledger_reservations").selectAll().where("account_id", "in", walletIds).orderBy("created_at").execute();
    return {
      accounts: [...wallets, ...holds].map((a) => ({
        id: a.id,
        kind: a.kind,
        walletId: a.wallet_id,
        balance: text(a.balance),
        createdAt: iso(a.created_at),
      })),
      entries: entries.map((e) => ({
        id: text(e.id),
        transactionId: e.transaction_id,
        kind: e.kind,
        accountId: e.account_id,
        amount: text(e.amount),
        reservationId: e.reservation_id,
        idempotencyKey: e.operation_key,
        createdAt: iso(e.created_at),
      })),
      reservations: reservations.map((r) => ({
        id: r.id,
        accountId: r.account_id,
        amount: text(r.amount),
        status: r.status,
        charged: text(r.charged),
        released: text(r.released),
        shortfall: text(r.shortfall),
        reference: r.reference,
        expiresAt: iso(r.expires_at),
        createdAt: iso(r.created_at),
        closedAt: iso(r.closed_at),
      })),
    };
  },
  async erase() {
    // Ledger rows are retained financial records without personal data; see the doc comment.
  },
};
