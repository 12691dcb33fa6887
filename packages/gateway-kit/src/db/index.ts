export { openDatabase, type Database, type DatabaseKind, type DatabaseOptions } from "./database.js";
export { PGliteDialect, type PGliteDialectOptions } from "./pglite-dialect.js";
export {
  defineMigrations,
  migrateToLatest,
  migrationTableName,
  type MigrationSet,
  type MigrateOptions,
  type MigrationReport,
} from "./migrations.js";
export { loadOptional, MissingDependencyError, OPTIONAL_DEPENDENCIES, type OptionalDependency } from "../optional-dependency.js";
export { retryTransaction } from "./retry-transaction.js";
