export {
  openDatabase,
  PGliteDialect,
  defineMigrations,
  migrateToLatest,
  migrationTableName,
  type Database,
  type DatabaseKind,
  type DatabaseOptions,
  type PGliteDialectOptions,
  type MigrationSet,
  type MigrateOptions,
  type MigrationReport,
} from "./db/index.js";
export { MissingDependencyError, OPTIONAL_DEPENDENCIES, type OptionalDependency } from "./optional-dependency.js";
export { AUTH_ERROR_CODES, AuthError, ConfigError, GatewayError, type AuthErrorCode } from "./errors.js";
export {
  HttpError,
  errorHandler,
  errorHeaders,
  errorStatus,
  errorStatuses,
  type ErrorBody,
  type ErrorHandlerOptions,
  type ErrorMapping,
  type ErrorStatuses,
} from "./http-error.js";
export type { Principal } from "./principal.js";
export * from "./http/index.js";
export * from "./audit/index.js";
export * from "./auth/index.js";
export * from "./credits/index.js";
export * from "./billing/index.js";
export * from "./limits/index.js";
export * from "./screening/index.js";
export * from "./privacy/index.js";
export * from "./budgets/index.js";
export * from "./spend/index.js";
