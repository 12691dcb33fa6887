export { noAudit, type AuditEventInput, type AuditSink } from "./audit-sink.js";
export { canonicalJson } from "./canonical-json.js";
export { auditMigrations } from "./migrations.js";
export {
  AUDIT_GENESIS_HASH,
  AUDIT_SCRUB_ACTION,
  AuditEventError,
  appendAuditEvent,
  auditCheckpoint,
  auditPiiDigest,
  auditRowHash,
  createAuditLog,
  listAuditEvents,
  scrubAuditPii,
  verifyAuditChain,
  type AuditChainProblem,
  type AuditCheckpoint,
  type AuditCheckpointKey,
  type VerifyAuditChainOptions,
  type AuditChainReport,
  type AuditLog,
  type AuditLogOptions,
  type AuditRecord,
  type AuditScrubWhere,
  type AuditSubjectEvent,
} from "./audit-log.js";
export { auditRequests, type AuditRequestsOptions } from "./audit-requests.js";
