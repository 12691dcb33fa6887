import { Kysely, PostgresDialect, type Dialect } from "kysely";
import { loadOptional } from "../optional-dependency.js";
import { PGliteDialect } from "./pglite-dialect.js";
import { ConfigError } from "../errors.js";

export type DatabaseKind = "postgres" | "pglite";

export interface DatabaseOptions {
  /** A PostgreSQL connection string. When absent, an embedded PGlite database is used. */
  url?: string;
  /** PGlite data folder; omitted means in memory. Ignored when `url` is set. */
  dataDir?: string;
  /** PostgreSQL schema to use as `search_path` (created if missing). */
  schema?: string;
  /** Pool size for PostgreSQL. Default 10. */
  maxConnections?: number;
}

export interface Database<DB = any> {
  db: Kysely<DB>;
  kind: DatabaseKind;
  close(): Promise<void>;
}

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/**
 * Opens PostgreSQL when a URL is given, otherwise an embedded PGlite database.
 *
 * @example
 * const { db, close } = await openDatabase({ url: process.env.DATABASE_URL });
 */
export async function openDatabase<DB = any>(options: DatabaseOptions = {}): Promise<Database<DB>> {
  if (options.schema !== undefined && !SCHEMA_NAME.test(options.schema)) {
    throw new ConfigError(`Invalid schema name "${options.schema}"`);
  }
  let dialect: Dialect;
  let kind: DatabaseKind;
  if (options.url) {
    kind = "postgres";
    const { default: pg } = await loadOptional<typeof import("pg")>("pg");
    if (options.schema) {
      const setup = new pg.Client({ connectionString: options.url });
      await setup.connect();
      try {
        await setup.query(`create schema if not exists "${options.schema}"`);
      } finally {
        await setup.end();
      }
    }
    const pool = new pg.Pool({
      connectionString: options.url,
      max: options.maxConnections ?? 10,
      ...(options.schema ? { options: `-c search_path=${options.schema}` } : {}),
    });
    dialect = new PostgresDialect({ pool });
  } else {
    kind = "pglite";
    const { PGlite } = await loadOptional<typeof import("@electric-sql/pglite")>("@electric-sql/pglite");
    const pglite = await PGlite.create(options.dataDir);
    if (options.schema) {
      await pglite.exec(`create schema if not exists "${options.schema}"; set search_path to "${options.schema}"`);
    }
    dialect = new PGliteDialect(pglite);
  }
  const db = new Kysely<DB>({ dialect });
  return { db, kind, close: () => db.destroy() };
}
