import { Migrator, sql, type Kysely, type Migration, type MigrationResultSet } from "kysely";

/** Named migrations; names sort in the order they run, e.g. `gk_auth_0001_users`. */
export type MigrationSet = Record<string, Migration>;

export interface MigrateOptions {
  /** kysely's bookkeeping table. Default `gateway_kit_migrations`, so a host app's own migrations stay separate. */
  tableName?: string;
}

/**
 * Runs every pending migration of the given sets, in name order, in one transaction each.
 * Throws with the failing migration's name when one fails.
 *
 * @example
 * await migrateToLatest(db, [authMigrations, creditMigrations]);
 */
export async function migrateToLatest(db: Kysely<any>, sets: MigrationSet[], options: MigrateOptions = {}): Promise<MigrationResultSet> {
  const all: MigrationSet = {};
  for (const set of sets) {
    for (const [name, migration] of Object.entries(set)) {
      if (all[name]) throw new Error(`Duplicate migration name "${name}"`);
      all[name] = migration;
    }
  }
  const tableName = options.tableName ?? "gateway_kit_migrations";
  // kysely looks for its bookkeeping tables in every schema unless told which one; name the
  // current schema so a database with several schemas (one per tenant or test) is not confused.
  const { rows } = await sql<{ schema: string }>`select current_schema() as schema`.execute(db);
  const migrator = new Migrator({
    db,
    provider: { getMigrations: async () => all },
    migrationTableSchema: rows[0]!.schema,
    migrationTableName: tableName,
    migrationLockTableName: `${tableName}_lock`,
  });
  const result = await migrator.migrateToLatest();
  if (result.error) {
    const failed = result.results?.find((r) => r.status === "Error");
    const cause = result.error instanceof Error ? result.error.message : String(result.error);
    throw new Error(`Migration ${failed?.migrationName ?? "(unknown)"} failed: ${cause}`, { cause: result.error });
  }
  return result;
}
