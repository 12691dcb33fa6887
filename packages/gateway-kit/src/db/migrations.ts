import { Migrator, sql, type DatabaseIntrospector, type Kysely, type Migration, type MigrationProvider, type MigrationResult } from "kysely";
import { ConfigError } from "../errors.js";

/**
 * One module's migrations. Each module keeps its own kysely bookkeeping tables
 * (`<module>_migrations` and `<module>_migrations_lock`), so a module can ship a new migration
 * whatever the other modules (gateway-kit's or the host's) have run: kysely requires the
 * migrations already run *in one table* to be a prefix of the sorted names.
 */
export interface MigrationSet extends MigrationProvider {
  /** Module name: lower-case letters, digits and `_`, e.g. `gk_auth` or `app`. */
  readonly module: string;
  /** The migrations by name; names sort in the order they run, e.g. `gk_auth_0001_users`. */
  readonly migrations: Readonly<Record<string, Migration>>;
}

export interface MigrateOptions {
  /**
   * The shared bookkeeping table of earlier versions, which held every module's migrations in
   * one list. When it exists, each module's table is seeded from its rows once, so an existing
   * database upgrades in place. Default `gateway_kit_migrations`; `false` skips the check.
   */
  legacyTableName?: string | false;
}

/** What `migrateToLatest` did, per module, in the order the modules were given. */
export interface MigrationReport {
  module: string;
  /** The migrations run now (already-run ones are not listed). */
  results: MigrationResult[];
}

const MODULE_NAME = /^[a-z][a-z0-9_]{0,40}$/;

/**
 * Names a module's migrations, for `migrateToLatest`.
 *
 * @example
 * export const appMigrations = defineMigrations("app", {
 *   app_0001_runs: { up: (db) => db.schema.createTable("runs").addColumn("id", "text", (c) => c.primaryKey()).execute() },
 * });
 * await migrateToLatest(db, [authMigrations, appMigrations]);
 */
export function defineMigrations(module: string, migrations: Record<string, Migration>): MigrationSet {
  if (!MODULE_NAME.test(module)) throw new ConfigError(`Invalid migration module name "${module}" (lower-case letters, digits and _)`);
  const frozen = Object.freeze({ ...migrations });
  return Object.freeze({ module, migrations: frozen, getMigrations: async () => frozen });
}

/** The bookkeeping table of a module. */
export function migrationTableName(module: string): string {
  return `${module}_migrations`;
}

/**
 * Runs every pending migration of each module, module by module in the order given (a module
 * that builds on another's tables comes after it), each migration in its own transaction and
 * each module under its own lock. Throws with the failing module and migration when one fails;
 * the modules before it stay migrated. On an up-to-date database this is one look at every
 * module's bookkeeping table; no Migrator runs and no lock is taken.
 *
 * @example
 * await migrateToLatest(db, [authMigrations, creditMigrations, billingMigrations, appMigrations]);
 */
export async function migrateToLatest(db: Kysely<any>, sets: MigrationSet[], options: MigrateOptions = {}): Promise<MigrationReport[]> {
  const modules = new Set<string>();
  const names = new Set<string>();
  for (const set of sets) {
    if (modules.has(set.module)) throw new ConfigError(`Migration module "${set.module}" is listed twice`);
    modules.add(set.module);
    for (const name of Object.keys(set.migrations)) {
      if (names.has(name)) throw new ConfigError(`Duplicate migration name "${name}"`);
      names.add(name);
    }
  }
  // kysely looks for its bookkeeping tables in every schema unless told which one; name the
  // current schema so a database with several schemas (one per tenant or test) is not confused.
  const { schema, upToDate } = await checkMigrated(db, sets);
  // Nothing to run: no module's Migrator (its lock, its catalog reads, its own transaction) is needed.
  if (upToDate) return sets.map((set) => ({ module: set.module, results: [] }));
  const legacy = options.legacyTableName ?? "gateway_kit_migrations";
  const reports: MigrationReport[] = [];
  for (const set of sets) {
    const tableName = migrationTableName(set.module);
    if (legacy !== false) await adoptLegacyRows(db, schema, legacy, tableName, Object.keys(set.migrations));
    const migrator = new Migrator({
      db: withSchemaScopedCatalog(db, schema),
      provider: set,
      migrationTableSchema: schema,
      migrationTableName: tableName,
      migrationLockTableName: `${tableName}_lock`,
    });
    const result = await migrator.migrateToLatest();
    if (result.error) {
      const failed = result.results?.find((r) => r.status === "Error");
      const cause = result.error instanceof Error ? result.error.message : String(result.error);
      throw new Error(`Migration ${set.module}/${failed?.migrationName ?? "(unknown)"} failed: ${cause}`, { cause: result.error });
    }
    reports.push({ module: set.module, results: result.results ?? [] });
  }
  return reports;
}

/**
 * One cheap look, before any Migrator: the current schema, and whether every module's bookkeeping
 * table exists and records exactly that module's migrations (two queries, whatever the number of
 * modules). Anything else (a table missing, a migration pending, a recorded name no module defines)
 * is left to the Migrators, which run pending migrations under each module's lock and report what
 * does not match. A migration another process is running has not committed its row yet, so it
 * counts as pending here and is waited for under its lock.
 */
async function checkMigrated(db: Kysely<any>, sets: MigrationSet[]): Promise<{ schema: string; upToDate: boolean }> {
  const tables = sets.map((set) => migrationTableName(set.module));
  const { rows } = await sql<{ schema: string; found: string | null }>`
    select current_schema() as schema,
      (select string_agg(c.relname, ',') from pg_catalog.pg_class c
        join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where n.nspname = current_schema() and c.relkind in ('r', 'p')
          and c.relname in (${sql.join(tables.length > 0 ? tables : [""])})) as found`.execute(db);
  const schema = rows[0]!.schema;
  const found = new Set(rows[0]!.found?.split(",") ?? []);
  if (tables.some((table) => !found.has(table))) return { schema, upToDate: false };
  if (sets.length === 0) return { schema, upToDate: true };
  const recorded = await sql<{ module: string; name: string }>`${sql.join(
    sets.map((set) => sql`select ${set.module}::text as module, name from ${sql.table(`${schema}.${migrationTableName(set.module)}`)}`),
    sql` union all `,
  )}`.execute(db);
  const byModule = new Map<string, Set<string>>(sets.map((set) => [set.module, new Set()]));
  for (const row of recorded.rows) byModule.get(row.module)!.add(row.name);
  const upToDate = sets.every((set) => {
    const done = byModule.get(set.module)!;
    const defined = Object.keys(set.migrations);
    return done.size === defined.length && defined.every((name) => done.has(name));
  });
  return { schema, upToDate };
}

/**
 * Seeds a module's new bookkeeping table from the shared table of earlier versions: the rows
 * naming this module's migrations, with their original timestamps. Runs only while the module's
 * table does not exist yet, so it happens once; the shared table is left as it is.
 */
async function adoptLegacyRows(db: Kysely<any>, schema: string, legacy: string, tableName: string, names: string[]): Promise<void> {
  if (names.length === 0) return;
  const exists = async (table: string) =>
    (await sql<{ found: string | null }>`select to_regclass(${`"${schema}"."${table}"`}) as found`.execute(db)).rows[0]?.found != null;
  if ((await exists(tableName)) || !(await exists(legacy))) return;
  await db.transaction().execute(async (trx) => {
    // The same shape kysely's Migrator creates, so it takes the table over as its own.
    await trx.schema
      .withSchema(schema)
      .createTable(tableName)
      .ifNotExists()
      .addColumn("name", "varchar(255)", (c) => c.notNull().primaryKey())
      .addColumn("timestamp", "varchar(255)", (c) => c.notNull())
      .execute();
    await sql`insert into ${sql.table(`${schema}.${tableName}`)} (name, timestamp)
      select name, timestamp from ${sql.table(`${schema}.${legacy}`)} where name in (${sql.join(names)})
      on conflict (name) do nothing`.execute(trx);
  });
}

/**
 * The database handle given to kysely's Migrator, whose catalog reader looks at one schema only.
 * kysely's own reader lists the tables of every schema and checks access to each; a schema that
 * another session drops during that read (a test's or a tenant's) fails the whole migration with
 * "schema does not exist". The Migrator only asks whether its two tables and its schema exist.
 */
function withSchemaScopedCatalog(db: Kysely<any>, schema: string): Kysely<any> {
  const introspection: DatabaseIntrospector = {
    async getSchemas() {
      const { rows } = await sql<{ name: string }>`select nspname as name from pg_catalog.pg_namespace where nspname = ${schema}`.execute(db);
      return rows.map((r) => ({ name: r.name }));
    },
    async getTables() {
      const { rows } = await sql<{ name: string; kind: string }>`
        select c.relname as name, c.relkind as kind from pg_catalog.pg_class c
        join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where n.nspname = ${schema} and c.relkind in ('r', 'p', 'v', 'm', 'f')`.execute(db);
      return rows.map((r) => ({ name: r.name, schema, isView: r.kind === "v" || r.kind === "m", columns: [] }));
    },
    async getMetadata() {
      return { tables: await this.getTables() };
    },
  };
  // Kysely's methods use private fields, so they are called on the real instance.
  return new Proxy(db, {
    get(target, property) {
      if (property === "introspection") return introspection;
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}
