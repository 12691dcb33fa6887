import { sql, type Kysely } from "kysely";
import { defineMigrations } from "../db/index.js";

/** Ids of the system accounts the first migration creates. */
export const SYSTEM_ACCOUNTS = {
  revenue: "system:revenue",
  grants: "system:grants",
  purchases: "system:purchases",
} as const;

/**
 * The ledger tables. The database itself keeps the books straight:
 * - `ledger_accounts.balance` is changed only by a trigger on `ledger_entries` inserts, and a
 *   CHECK refuses a negative balance on wallets and holds;
 * - entries and transactions refuse UPDATE, DELETE and TRUNCATE;
 * - a deferred constraint trigger refuses, at commit, any transaction whose entries are not
 *   exactly two that sum to zero.
 *
 * @example
 * await migrateToLatest(db, [creditMigrations]);
 */
export const creditMigrations = defineMigrations("gk_credits", {
  gk_credits_0001_ledger: {
    up: async (db: Kysely<any>) => {
      await sql`
        create table ledger_accounts (
          id text primary key,
          kind text not null check (kind in ('user_wallet', 'team_wallet', 'hold', 'revenue', 'grants', 'purchases')),
          owner_id text,
          wallet_id text references ledger_accounts (id),
          balance bigint not null default 0,
          created_at timestamptz not null default now(),
          constraint ledger_accounts_non_negative check (kind in ('revenue', 'grants', 'purchases') or balance >= 0),
          constraint ledger_accounts_owner check ((kind in ('user_wallet', 'team_wallet')) = (owner_id is not null)),
          constraint ledger_accounts_hold_wallet check ((kind = 'hold') = (wallet_id is not null)),
          constraint ledger_accounts_owner_unique unique (kind, owner_id)
        )`.execute(db);
      await sql`create unique index ledger_accounts_hold_idx on ledger_accounts (wallet_id) where kind = 'hold'`.execute(db);
      await sql`
        create table ledger_operations (
          idempotency_key text primary key,
          kind text not null,
          request_hash text not null,
          created_at timestamptz not null default now()
        )`.execute(db);
      await sql`
        create table ledger_transactions (
          id text primary key,
          operation_key text not null references ledger_operations (idempotency_key),
          kind text not null check (kind in ('grant', 'purchase', 'transfer', 'reserve', 'charge', 'release', 'overage', 'expire')),
          reservation_id text,
          created_at timestamptz not null default now()
        )`.execute(db);
      await sql`create index ledger_transactions_operation_idx on ledger_transactions (operation_key)`.execute(db);
      await sql`
        create table ledger_entries (
          id bigint generated always as identity primary key,
          transaction_id text not null references ledger_transactions (id),
          account_id text not null references ledger_accounts (id),
          amount bigint not null check (amount <> 0),
          created_at timestamptz not null default now()
        )`.execute(db);
      await sql`create index ledger_entries_account_idx on ledger_entries (account_id, id)`.execute(db);
      await sql`create index ledger_entries_transaction_idx on ledger_entries (transaction_id)`.execute(db);
      await sql`
        create table ledger_reservations (
          id text primary key,
          account_id text not null references ledger_accounts (id),
          hold_account_id text not null references ledger_accounts (id),
          amount bigint not null check (amount > 0),
          status text not null check (status in ('open', 'settled', 'released', 'expired')),
          charged bigint,
          released bigint,
          shortfall bigint,
          reference text,
          idempotency_key text not null references ledger_operations (idempotency_key),
          expires_at timestamptz not null,
          created_at timestamptz not null default now(),
          closed_at timestamptz
        )`.execute(db);
      await sql`create index ledger_reservations_open_idx on ledger_reservations (expires_at) where status = 'open'`.execute(db);
      await sql`create index ledger_reservations_account_idx on ledger_reservations (account_id)`.execute(db);

      await sql`
        create function gk_ledger_refuse_change() returns trigger language plpgsql as $$
        begin
          raise exception '% is append-only: % refused', tg_table_name, tg_op using errcode = '55000';
        end $$`.execute(db);
      for (const table of ["ledger_entries", "ledger_transactions"]) {
        await sql`create trigger ${sql.raw(`${table}_immutable`)} before update or delete on ${sql.table(table)}
          for each row execute function gk_ledger_refuse_change()`.execute(db);
        await sql`create trigger ${sql.raw(`${table}_no_truncate`)} before truncate on ${sql.table(table)}
          for each statement execute function gk_ledger_refuse_change()`.execute(db);
      }

      // Balances move only through entries: the entry trigger below is the one writer.
      await sql`
        create function gk_ledger_guard_balance() returns trigger language plpgsql as $$
        begin
          if tg_op = 'INSERT' then
            if new.balance <> 0 then
              raise exception 'ledger account % must open with a zero balance', new.id using errcode = '55000';
            end if;
          elsif new.balance is distinct from old.balance and pg_trigger_depth() < 2 then
            raise exception 'ledger account balances change only through ledger_entries' using errcode = '55000';
          end if;
          return new;
        end $$`.execute(db);
      await sql`create trigger ledger_accounts_guard_balance before insert or update on ledger_accounts
        for each row execute function gk_ledger_guard_balance()`.execute(db);
      await sql`create trigger ledger_accounts_no_delete before delete on ledger_accounts
        for each row execute function gk_ledger_refuse_change()`.execute(db);

      await sql`
        create function gk_ledger_apply_entry() returns trigger language plpgsql as $$
        begin
          update ledger_accounts set balance = balance + new.amount where id = new.account_id;
          return null;
        end $$`.execute(db);
      await sql`create trigger ledger_entries_apply after insert on ledger_entries
        for each row execute function gk_ledger_apply_entry()`.execute(db);

      await sql`
        create function gk_ledger_check_transaction() returns trigger language plpgsql as $$
        declare
          total numeric;
          n integer;
        begin
          select coalesce(sum(amount), 0), count(*) into total, n from ledger_entries where transaction_id = new.transaction_id;
          if total <> 0 or n <> 2 then
            raise exception 'ledger transaction % is unbalanced (% entries, sum %)', new.transaction_id, n, total
              using errcode = '23514';
          end if;
          return null;
        end $$`.execute(db);
      await sql`create constraint trigger ledger_entries_balanced after insert on ledger_entries
        deferrable initially deferred for each row execute function gk_ledger_check_transaction()`.execute(db);

      await sql`insert into ledger_accounts (id, kind) values
        (${SYSTEM_ACCOUNTS.revenue}, 'revenue'),
        (${SYSTEM_ACCOUNTS.grants}, 'grants'),
        (${SYSTEM_ACCOUNTS.purchases}, 'purchases')`.execute(db);
    },
  },
  gk_credits_0200_reversals_and_bounds: {
    up: async (db: Kysely<any>) => {
      // Every balance stays within the safe-integer range the API reads amounts in.
      await sql`alter table ledger_accounts add constraint ledger_accounts_safe_balance
        check (balance between -9007199254740991 and 9007199254740991)`.execute(db);
      // What a refund or chargeback took back after the credits were spent. Only wallets owe.
      await sql`alter table ledger_accounts add column debt bigint not null default 0`.execute(db);
      await sql`alter table ledger_accounts add constraint ledger_accounts_debt
        check (debt between 0 and 9007199254740991 and (debt = 0 or kind in ('user_wallet', 'team_wallet')))`.execute(db);
      await sql`alter table ledger_transactions drop constraint ledger_transactions_kind_check`.execute(db);
      await sql`alter table ledger_transactions add constraint ledger_transactions_kind_check
        check (kind in ('grant', 'purchase', 'transfer', 'reserve', 'charge', 'release', 'overage', 'expire', 'reversal', 'repayment'))`.execute(db);
      await sql`
        create table ledger_reversals (
          idempotency_key text primary key references ledger_operations (idempotency_key),
          account_id text not null references ledger_accounts (id),
          reason text not null check (reason in ('refund', 'dispute')),
          amount bigint not null check (amount > 0),
          recovered bigint not null check (recovered >= 0),
          debt bigint not null check (debt >= 0),
          created_at timestamptz not null default now(),
          check (recovered + debt = amount)
        )`.execute(db);
      await sql`create index ledger_reversals_account_idx on ledger_reversals (account_id)`.execute(db);
    },
  },
});
