export { openDatabase, type Database, type DatabaseKind, type DatabaseOptions } from "./db/database.js";
export { PGliteDialect } from "./db/pglite-dialect.js";
export { migrateToLatest, type MigrationSet, type MigrateOptions } from "./db/migrations.js";
export { HttpError, errorHandler, type ErrorBody, type ErrorHandlerOptions } from "./http-error.js";
export type { Principal } from "./principal.js";
export { noAudit, type AuditEventInput, type AuditSink } from "./audit/audit-sink.js";
export * from "./auth/index.js";
export * from "./credits/index.js";
