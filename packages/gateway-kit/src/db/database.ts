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
  /**
   * PGlite only: a new embedded database starts as a copy of this dump (made with PGlite's
   * `dumpDataDir()`, e.g. of a migrated database) instead of an empty one, which skips PGlite's
   * initdb (seconds) and whatever the dump already holds. Ignored with `url`; with a `dataDir`,
   * only for a folder that holds no database yet (PGlite refuses to load over one).
   */
  loadDataDir?: Blob;
  /** PostgreSQL schema to use as `search_path` (created if missing). */
  schema?: string;
  /** Pool size for PostgreSQL. Default 10. */
  maxConnections?: number;
  /**
   * Told when PostgreSQL drops a connection (a restart, a failover, `pg_terminate_backend`), idle
   * in the pool or in use, e.g. to log it. The pool discards the connection and the next query
   * opens a fresh one; a query that was running on it fails on its own. Default: nothing.
   */
  onConnectionError?: (error: Error) => void;
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
    // A dropped connection emits "error" on its client and, when idle, on the pool: with no
    // listener Node ends the process, so one database restart would take the whole server down.
    const onConnectionError = (error: Error) => {
      try {
        options.onConnectionError?.(error);
      } catch {
        // An observer's failure must not become the crash this listener prevents.
      }
    };
    pool.on("error", onConnectionError);
    pool.on("connect", (client) => client.on("error", onConnectionError));
    dialect = new PostgresDialect({ pool });
  } else {
    kind = "pglite";
    const { PGlite } = await loadOptional<typeof import("@electric-sql/pglite")>("@electric-sql/pglite");
    const pglite = await PGlite.create({ ...(options.dataDir !== undefined ? { dataDir: options.dataDir } : {}), ...(options.loadDataDir ? { loadDataDir: options.loadDataDir } : {}) });
    if (options.schema) {
      await pglite.exec(`create schema if not exists "${options.schema}"; set search_path to "${options.schema}"`);
    }
    dialect = new PGliteDialect(pglite);
  }
  const db = new Kysely<DB>({ dialect });
  return { db, kind, close: () => db.destroy() };
}
