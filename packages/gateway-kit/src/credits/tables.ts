import type { ColumnType, Generated } from "kysely";

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;
type NullableTimestamp = ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;
/** bigint columns read back as strings from pg and as numbers or bigints from PGlite. */
type Micro = ColumnType<string | number | bigint, number | bigint | string, number | bigint | string>;
type NullableMicro = ColumnType<string | number | bigint | null, number | bigint | string | null | undefined, number | bigint | string | null>;

/**
 * Kysely table types of `creditMigrations`. No column holds personal data: owners and
 * references are opaque ids.
 */
export interface CreditTables {
  ledger_accounts: {
    id: string;
    kind: string;
    owner_id: string | null;
    wallet_id: string | null;
    balance: ColumnType<string | number | bigint, never, never>;
    debt: ColumnType<string | number | bigint, never, number | bigint | string>;
    created_at: Generated<Date>;
  };
  ledger_reversals: {
    idempotency_key: string;
    account_id: string;
    reason: string;
    amount: Micro;
    recovered: Micro;
    debt: Micro;
    created_at: Generated<Date>;
  };
  ledger_operations: {
    idempotency_key: string;
    kind: string;
    request_hash: string;
    created_at: Generated<Date>;
  };
  ledger_transactions: {
    id: string;
    operation_key: string;
    kind: string;
    reservation_id: string | null;
    created_at: Generated<Date>;
  };
  ledger_entries: {
    id: ColumnType<string | number | bigint, never, never>;
    transaction_id: string;
    account_id: string;
    amount: Micro;
    created_at: Generated<Date>;
  };
  ledger_reservations: {
    id: string;
    account_id: string;
    hold_account_id: string;
    amount: Micro;
    status: string;
    charged: NullableMicro;
    released: NullableMicro;
    shortfall: NullableMicro;
    reference: string | null;
    idempotency_key: string;
    expires_at: Timestamp;
    created_at: Generated<Date>;
    closed_at: NullableTimestamp;
  };
}
