import { sql, type ColumnType, type Generated, type Kysely } from "kysely";
import { defineMigrations } from "../db/index.js";

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
  gk_credits_0300_billing_reversals: {
    up: async (db: Kysely<any>) => {
      // The payment a checkout was paid with, so refunds and disputes find their checkout, and
      // how many of its credits have been taken back so far.
      await sql`alter table billing_checkouts add column payment_intent_id text`.execute(db);
      await sql`alter table billing_checkouts add column refunded_cents bigint not null default 0`.execute(db);
      await sql`alter table billing_checkouts add column reversed_credits bigint not null default 0`.execute(db);
      await sql`alter table billing_checkouts add column adjustments integer not null default 0`.execute(db);
      await sql`alter table billing_checkouts drop constraint billing_checkouts_status_check`.execute(db);
      await sql`alter table billing_checkouts add constraint billing_checkouts_status_check
        check (status in ('open', 'pending', 'paid', 'failed', 'expired', 'refunded', 'disputed'))`.execute(db);
      await sql`create unique index billing_checkouts_payment_intent_idx on billing_checkouts (payment_intent_id) where payment_intent_id is not null`.execute(db);
      // One row per Stripe refund or dispute: a refund counted once however many events name it.
      await sql`
        create table billing_reversals (
          id text primary key,
          session_id text not null references billing_checkouts (session_id),
          kind text not null check (kind in ('refund', 'dispute')),
          amount_cents bigint not null check (amount_cents >= 0),
          reinstated_at timestamptz,
          created_at timestamptz not null default now()
        )`.execute(db);
      await sql`create index billing_reversals_session_idx on billing_reversals (session_id)`.execute(db);
    },
  },
  gk_credits_0400_billing_early_reversals: {
    up: async (db: Kysely<any>) => {
      // A refund or dispute can be delivered before the checkout's completion names its payment:
      // it is kept under its payment until the grant claims it.
      await sql`alter table billing_reversals alter column session_id drop not null`.execute(db);
      await sql`alter table billing_reversals add column payment_intent_id text`.execute(db);
      await sql`alter table billing_reversals add column currency text`.execute(db);
      // A refund that failed or was cancelled: final, so a late "pending" snapshot cannot count it again.
      await sql`alter table billing_reversals add column voided_at timestamptz`.execute(db);
      await sql`create index billing_reversals_unclaimed_idx on billing_reversals (payment_intent_id) where session_id is null`.execute(db);
      // A charge's cumulative refunded amount seen before its checkout was granted.
      await sql`
        create table billing_early_refunds (
          payment_intent_id text primary key,
          currency text not null,
          refunded_cents bigint not null check (refunded_cents >= 0),
          created_at timestamptz not null default now()
        )`.execute(db);
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
    payment_intent_id: ColumnType<string | null, string | null | undefined, string | null>;
    refunded_cents: ColumnType<string | number | bigint, number | undefined, number>;
    reversed_credits: ColumnType<string | number | bigint, number | undefined, number>;
    adjustments: ColumnType<number, number | undefined, number>;
  };
  billing_early_refunds: {
    payment_intent_id: string;
    currency: string;
    refunded_cents: ColumnType<string | number | bigint, number, number>;
    created_at: Generated<Date>;
  };
  billing_reversals: {
    id: string;
    session_id: string | null;
    payment_intent_id: ColumnType<string | null, string | null | undefined, string | null>;
    currency: ColumnType<string | null, string | null | undefined, string | null>;
    voided_at: ColumnType<Date | null, Date | null | undefined, Date | null>;
    kind: "refund" | "dispute";
    amount_cents: ColumnType<string | number | bigint, number, number>;
    reinstated_at: ColumnType<Date | null, Date | null | undefined, Date | null>;
    created_at: Generated<Date>;
  };
}
