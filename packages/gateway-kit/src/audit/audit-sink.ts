/** One thing worth auditing: who did what to which target, with what result. */
export interface AuditEventInput {
  /** Tenant the chain belongs to (team id, or user id for individuals); `null` for system events. */
  tenantId: string | null;
  /** The acting user, or null for anonymous/system actors. */
  actorId: string | null;
  /** Dotted verb, e.g. `auth.login`, `auth.refresh_reuse`, `api_key.create`, `credits.reserve`. */
  action: string;
  /** What was acted on, e.g. `user:123`, `session:abc`. */
  target?: string | null;
  result: "success" | "failure" | "denied";
  ip?: string | null;
  requestId?: string | null;
  /** Free-form details; must be JSON-serialisable and free of secrets. */
  details?: Record<string, unknown>;
}

/**
 * Where security and API events go. The hash-chained kysely audit log implements it;
 * a host app may bring its own.
 */
export interface AuditSink {
  record(event: AuditEventInput): Promise<void>;
}

/** An audit sink that drops everything, for apps that do not audit. */
export const noAudit: AuditSink = { record: async () => {} };
