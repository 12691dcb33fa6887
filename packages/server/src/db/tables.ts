import type { ColumnType, Generated } from "kysely";

type Timestamp = ColumnType<Date, Date | string, Date | string>;
type Json<T = unknown> = ColumnType<T, string, string>;

export type RunState = "queued" | "running" | "succeeded" | "failed" | "cancelled" | "interrupted";

export interface RunsTable {
  id: string;
  team_id: string;
  user_id: string;
  vision: string;
  /** `{ url, ref? }` or `{ path }`. */
  repo: Json<Record<string, unknown>>;
  options: Json<Record<string, unknown>>;
  model: string;
  status: RunState;
  /** agent-core's TaskSnapshot after the last turn, for resume. */
  snapshot: Json<unknown> | null;
  /** The run attempt's spend handle (`spend_…`; a bare ledger reservation id on runs made before spends). */
  reservation_id: string | null;
  /** Micro-credits charged at settlement; null until settled. */
  charged: ColumnType<string | number | null, number | null, number | null>;
  usage: Json<Record<string, number>> | null;
  error: Json<{ code: string; message: string }> | null;
  summary: string | null;
  /** The commit the run started from, and the one its work ended on. */
  base_commit: string | null;
  head_commit: string | null;
  branch: string | null;
  worker_id: string | null;
  /** Micro-credits earlier attempts settled before the run was resumed (`charged` includes them). */
  prior_charged: ColumnType<string | number, number | undefined, number>;
  attempt: Generated<number>;
  heartbeat_at: Timestamp | null;
  cancel_requested: Generated<boolean>;
  created_at: Timestamp;
  started_at: Timestamp | null;
  finished_at: Timestamp | null;
}

export interface RunAgentsTable {
  run_id: string;
  agent_id: string;
  parent_id: string | null;
  depth: number;
  branch: string;
  title: string;
  phase: string;
  status: string | null;
  usage: Json<Record<string, number>>;
  cost: ColumnType<string | number, number, number>;
}

export interface RunEventsTable {
  run_id: string;
  /** The server's own gap-free number for the event within its run, from 1. */
  seq: number;
  type: string;
  agent_id: string;
  payload: Json<Record<string, unknown>>;
  at: Timestamp;
}

export interface ServerSettingsTable {
  name: string;
  value: Json<unknown>;
}

/** A screened repository upload, unpacked into a fresh repository a run can start from. */
export interface UploadsTable {
  id: string;
  team_id: string;
  user_id: string;
  format: string;
  compressed_bytes: ColumnType<string | number, number, number>;
  uncompressed_bytes: ColumnType<string | number, number, number>;
  files: number;
  /** The commit of the fresh repository made from the upload's files. */
  commit: string;
  created_at: Timestamp;
}

/** Per-user choices, e.g. whether deleting a run keeps its workspace on disk. */
export interface UserPreferencesTable {
  user_id: string;
  keep_workspaces: Generated<boolean>;
}

/** An invitation to join a team; only the SHA-256 of its token is kept. */
export interface TeamInvitesTable {
  id: string;
  team_id: string;
  /** Normalised (lower-case) address the invite is for; only that user can accept it. */
  email: string;
  role: string;
  token_hash: string;
  invited_by: string | null;
  created_at: Timestamp;
  expires_at: Timestamp;
  accepted_at: Timestamp | null;
  accepted_by: string | null;
  revoked_at: Timestamp | null;
}

/** An endpoint a team registered for run events. */
export interface WebhooksTable {
  id: string;
  team_id: string;
  user_id: string;
  url: string;
  /** Event types it receives, e.g. `["run.completed", "run.failed"]`. */
  events: Json<string[]>;
  /** The `whsec_` signing secret (shown once, kept to sign). */
  secret: string;
  created_at: Timestamp;
}

/** One event for one endpoint: its stable `webhook-id`, the body every attempt sends, its state. */
export interface WebhookMessagesTable {
  id: string;
  webhook_id: string;
  team_id: string;
  event_type: string;
  /** What the event is about (`run:<id>:<attempt>`); with the endpoint and type it makes one message. */
  subject: string;
  body: string;
  status: "pending" | "delivered" | "failed";
  attempts: Generated<number>;
  next_attempt_at: Timestamp | null;
  created_at: Timestamp;
}

/** Every delivery attempt: what the receiver answered (or why none came) and how long it took. */
export interface WebhookDeliveriesTable {
  id: string;
  message_id: string;
  webhook_id: string;
  attempt: number;
  status_code: number | null;
  duration_ms: number;
  error: string | null;
  response_body: string | null;
  at: Timestamp;
}

export interface ServerTables {
  team_invites: TeamInvitesTable;
  webhooks: WebhooksTable;
  webhook_messages: WebhookMessagesTable;
  webhook_deliveries: WebhookDeliveriesTable;
  uploads: UploadsTable;
  user_preferences: UserPreferencesTable;
  runs: RunsTable;
  run_agents: RunAgentsTable;
  run_events: RunEventsTable;
  server_settings: ServerSettingsTable;
}
