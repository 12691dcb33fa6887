import type { ColumnType } from "kysely";

type Timestamp = ColumnType<Date, Date, Date>;
type NullableTimestamp = ColumnType<Date | null, Date | null | undefined, Date | null>;

/** Kysely table types of the auth migrations; a host can intersect them with its own `DB` type. */
export interface AuthTables {
  users: {
    id: string;
    email: string;
    email_verified: boolean;
    password_hash: string | null;
    display_name: string | null;
    created_at: Timestamp;
    password_changed_at: NullableTimestamp;
  };
  teams: { id: string; name: string; personal: boolean; created_at: Timestamp };
  memberships: { team_id: string; user_id: string; role: string; created_at: Timestamp };
  auth_sessions: {
    id: string;
    user_id: string;
    team_id: string | null;
    created_at: Timestamp;
    last_seen_at: Timestamp;
    expires_at: Timestamp;
    revoked_at: NullableTimestamp;
    revoke_reason: string | null;
    user_agent: string | null;
    ip: string | null;
  };
  refresh_tokens: {
    id: string;
    session_id: string;
    token_hash: string;
    created_at: Timestamp;
    rotated_at: NullableTimestamp;
  };
  api_keys: {
    id: string;
    prefix: string;
    secret_hash: string;
    user_id: string;
    team_id: string;
    name: string;
    scopes: string;
    created_at: Timestamp;
    expires_at: NullableTimestamp;
    revoked_at: NullableTimestamp;
    last_used_at: NullableTimestamp;
  };
  mfa_factors: {
    id: string;
    user_id: string;
    kind: string;
    label: string | null;
    secret: string | null;
    secret_key_id: ColumnType<string | null, string | null | undefined, string | null>;
    phone: string | null;
    credential_id: string | null;
    public_key: string | null;
    counter: ColumnType<string | number | bigint, number, number>;
    transports: string | null;
    last_used_step: ColumnType<string | number | bigint, number, number>;
    confirmed_at: NullableTimestamp;
    created_at: Timestamp;
  };
  recovery_codes: { id: string; user_id: string; code_hash: string; used_at: NullableTimestamp; created_at: Timestamp };
  oauth_accounts: { provider: string; subject: string; user_id: string; email: string | null; created_at: Timestamp };
  login_attempts: { key: string; failures: number; locked_until: NullableTimestamp; last_failure_at: Timestamp };
  auth_counters: { key: string; window_start: Timestamp; count: number };
  auth_flows: {
    id: string;
    kind: string;
    user_id: string | null;
    data: string;
    attempts: number;
    expires_at: Timestamp;
    created_at: Timestamp;
  };
}
