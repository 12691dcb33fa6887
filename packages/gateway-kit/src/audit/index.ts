export { noAudit, type AuditEventInput, type AuditSink } from "./audit-sink.js";
