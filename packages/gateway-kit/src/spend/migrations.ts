import { sql, type Kysely } from "kysely";
import { defineMigrations } from "../db/index.js";

/**
 * The table behind `createSpend`: one row per spend, tying its wallet reservation and its budget
 * reservation to one handle and recording how it closed. Run after `creditMigrations` (it
 * references the ledger's tables) and `budgetMigrations`.
 *
 * @example
 * await migrateToLatest(db, [creditMigrations, budgetMigrations, spendMigrations]);
 */
export const spendMigrations = defineMigrations("gk_spend", {
  gk_spend_0001_spends: {
    up: async (db: Kysely<any>) => {
      await sql`
        create table spends (
          id text primary key,
          idempotency_key text not null unique,
          request_hash text not null,
          account_id text not null references ledger_accounts (id),
          reservation_id text not null unique references ledger_reservations (id),
          budget_key text,
          scopes text not null,
          estimate bigint not null check (estimate > 0),
          status text not null check (status in ('open', 'settled', 'released', 'expired')),
          actual bigint,
          charged bigint,
          released bigint,
          shortfall bigint,
          reference text,
          expires_at timestamptz not null,
          created_at timestamptz not null default now(),
          closed_at timestamptz,
          constraint spends_closed check (
            (status = 'open') = (closed_at is null)
            and (status = 'open' or (actual >= 0 and charged >= 0 and released >= 0 and shortfall >= 0))
          )
        )`.execute(db);
      await sql`create index spends_open_idx on spends (expires_at) where status = 'open'`.execute(db);
      await sql`create index spends_reference_idx on spends (reference) where reference is not null`.execute(db);
    },
  },
});

/** Kysely table types of `spendMigrations`. No column holds personal data. */
export interface SpendTables {
  spends: {
    id: string;
    idempotency_key: string;
    request_hash: string;
    account_id: string;
    reservation_id: string;
    budget_key: string | null;
    scopes: string;
    estimate: string | number | bigint;
    status: string;
    actual: string | number | bigint | null;
    charged: string | number | bigint | null;
    released: string | number | bigint | null;
    shortfall: string | number | bigint | null;
    reference: string | null;
    expires_at: Date;
    created_at: Date;
    closed_at: Date | null;
  };
}
