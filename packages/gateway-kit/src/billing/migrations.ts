import { sql, type ColumnType, type Generated, type Kysely } from "kysely";
import { defineMigrations } from "../db/migrations.js";

/**
 * Tables for Stripe billing: the checkout sessions this app started and every webhook event it
 * processed. Run after `creditMigrations` (the names sort after them).
 *
 * @example
 * await migrateToLatest(db, [creditMigrations, billingMigrations]);
 */
export const billingMigrations = defineMigrations("gk_billing", {
  gk_credits_0100_stripe_billing: {
    up: async (db: Kysely<any>) => {
      await sql`
        create table stripe_events (
          id text primary key,
          type text not null,
          stripe_created_at timestamptz not null,
          received_at timestamptz not null default now(),
          outcome text not null
        )`.execute(db);
      await sql`
        create table billing_checkouts (
          session_id text primary key,
          account_id text not null references ledger_accounts (id),
          pack_id text not null,
          credits bigint not null check (credits > 0),
          amount_total bigint not null,
          currency text not null,
          status text not null check (status in ('open', 'pending', 'paid', 'failed', 'expired')),
          grant_transaction_id text,
          created_at timestamptz not null default now(),
          completed_at timestamptz
        )`.execute(db);
      await sql`create index billing_checkouts_account_idx on billing_checkouts (account_id)`.execute(db);
    },
  },
});

export interface BillingTables {
  stripe_events: { id: string; type: string; stripe_created_at: ColumnType<Date, Date, Date>; received_at: Generated<Date>; outcome: string };
  billing_checkouts: {
    session_id: string;
    account_id: string;
    pack_id: string;
    credits: ColumnType<string | number | bigint, number, number>;
    amount_total: ColumnType<string | number | bigint, number, number>;
    currency: string;
    status: string;
    grant_transaction_id: ColumnType<string | null, string | null | undefined, string | null>;
    created_at: Generated<Date>;
    completed_at: ColumnType<Date | null, Date | null | undefined, Date | null>;
  };
}
