export { openDatabase, type Database, type DatabaseKind, type DatabaseOptions } from "./db/database.js";
export { PGliteDialect } from "./db/pglite-dialect.js";
export { migrateToLatest, type MigrationSet, type MigrateOptions } from "./db/migrations.js";
