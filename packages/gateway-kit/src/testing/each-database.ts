import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import type { PGlite } from "@electric-sql/pglite";
import { Kysely } from "kysely";
import { afterAll, beforeAll, describe } from "vitest";
import { openDatabase, PGliteDialect, type Database } from "../db/index.js";
import { loadOptional } from "../optional-dependency.js";

/** The PostgreSQL server the suites run against. */
export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";

export interface DatabaseFixture {
  kind: "postgres" | "pglite";
  /** The open database; valid inside tests (after `beforeAll`). */
  readonly database: Database;
  /** The PostgreSQL URL and schema of this suite (postgres only), for opening more connections. */
  url?: string;
  schema?: string;
}

/**
 * Runs one suite against real PostgreSQL (a fresh schema, dropped afterwards) and against
 * in-memory PGlite, so every storage implementation passes the same contract.
 *
 * Each PGlite suite gets an empty database. Starting PGlite costs about a second of CPU, so the
 * database of a finished suite is emptied (every schema dropped, `public` made anew, the session
 * reset with `discard all`) and handed to the next suite of the same process, but only when its
 * catalog then reads as a new one's does (schemas with their owners and grants, roles, extensions,
 * database settings); otherwise it is closed and the next suite starts a new one.
 *
 * @example
 * describeEachDatabase("ledger", (fixture) => {
 *   beforeAll(() => migrateToLatest(fixture.database.db, [creditMigrations]));
 *   it("...", async () => { await fixture.database.db.selectFrom("ledger_accounts") ... });
 * });
 */
export function describeEachDatabase(name: string, suite: (fixture: DatabaseFixture) => void): void {
  for (const kind of ["postgres", "pglite"] as const) {
    describe(`${name} [${kind}]`, () => {
      let database: Database | undefined;
      /** The PGlite of a pglite suite, handed to the next suite when the suite is done. */
      let pooled: PGlite | undefined;
      const fixture: DatabaseFixture = {
        kind,
        get database() {
          if (!database) throw new Error("database is not open yet (use it inside tests or hooks)");
          return database;
        },
      };
      beforeAll(async () => {
        if (kind === "postgres") {
          fixture.url = TEST_DATABASE_URL;
          fixture.schema = `t_${randomBytes(6).toString("hex")}`;
          database = await openDatabase({ url: TEST_DATABASE_URL, schema: fixture.schema });
        } else {
          const pglite = await takePGlite();
          const db = new Kysely({ dialect: new PGliteDialect(pglite, { closeOnDestroy: false }) });
          database = { db, kind: "pglite", close: () => db.destroy() };
          pooled = pglite;
        }
      });
      afterAll(async () => {
        await database?.close();
        if (pooled) await giveBackPGlite(pooled);
        if (kind === "postgres" && fixture.schema) {
          const { default: pg } = await import("pg");
          const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
          await client.connect();
          await client.query(`drop schema if exists "${fixture.schema}" cascade`);
          await client.end();
        }
      });
      suite(fixture);
    });
  }
}

/** Emptied PGlite databases of finished suites, for the next suites of this process. */
const idlePGlites: PGlite[] = [];
const MAX_IDLE_PGLITES = 2;
/** What a new PGlite's catalog reads as (`catalogFingerprint`), found on the first one started. */
let newCatalog: string | undefined;

async function takePGlite(): Promise<PGlite> {
  const idle = idlePGlites.pop();
  if (idle) return idle;
  const { PGlite } = await loadOptional<typeof import("@electric-sql/pglite")>("@electric-sql/pglite");
  const pglite = await PGlite.create(await emptyPGlite());
  newCatalog ??= await catalogFingerprint(pglite);
  return pglite;
}

/** Empties a finished suite's PGlite and keeps it for the next suite, or closes it when it does not read as new. */
async function giveBackPGlite(pglite: PGlite): Promise<void> {
  if (pglite.closed) return;
  try {
    // A transaction the suite left open (a warning, not an error, when there is none).
    await pglite.exec("rollback");
    const schemas = await pglite.query<{ name: string }>(`select nspname as name from pg_namespace where nspname <> 'information_schema' and nspname not like 'pg\\_%'`);
    await pglite.exec(
      [
        ...schemas.rows.map(({ name }) => `drop schema "${name.replaceAll('"', '""')}" cascade;`),
        // As initdb makes it (PostgreSQL 15 and later).
        "create schema public authorization pg_database_owner;",
        "grant usage on schema public to public;",
        "comment on schema public is 'standard public schema';",
      ].join("\n"),
    );
    // Settings, prepared statements, temporary tables, advisory locks and listeners of the session.
    await pglite.exec("discard all");
    if (idlePGlites.length < MAX_IDLE_PGLITES && (await catalogFingerprint(pglite)) === newCatalog) {
      idlePGlites.push(pglite);
      return;
    }
  } catch {
    // Not reusable: closed below.
  }
  await pglite.close().catch(() => {});
}

/** The parts of a database's catalog a suite can change beyond its tables: equal for a new database and an emptied one. */
async function catalogFingerprint(pglite: PGlite): Promise<string> {
  const { rows } = await pglite.query(`
    select
      (select string_agg(nspname || ' ' || nspowner::regrole || ' ' || coalesce(nspacl::text, '') || ' ' || coalesce(obj_description(oid, 'pg_namespace'), ''), ', ' order by nspname)
        from pg_namespace where nspname not like 'pg\\_%') as schemas,
      (select string_agg(rolname, ', ' order by rolname) from pg_roles) as roles,
      (select string_agg(extname || ' ' || extversion, ', ' order by extname) from pg_extension) as extensions,
      (select count(*) from pg_db_role_setting) as settings,
      (select count(*) from pg_largeobject_metadata) as large_objects,
      (select count(*) from pg_event_trigger) as event_triggers,
      (select count(*) from pg_prepared_xacts) as prepared,
      (select count(*) from pg_class where relnamespace = 'public'::regnamespace) as public_relations,
      current_setting('search_path') as search_path`);
  return JSON.stringify(rows[0]);
}

/**
 * Where an in-memory PGlite starts: when `KEEN_TEST_PGLITE_DUMP` names a dump of a freshly
 * initialised PGlite (`dumpDataDir()`; keen's own test run makes one in its global setup), a copy
 * of it, which skips initdb; otherwise PGlite initialises a new one.
 */
async function emptyPGlite(): Promise<{ loadDataDir?: Blob }> {
  const path = process.env.KEEN_TEST_PGLITE_DUMP;
  if (!path) return {};
  return { loadDataDir: new Blob([await readFile(path)]) };
}

/**
 * Opens `count` more connection pools on a PostgreSQL suite's schema, standing in for other
 * server processes; call inside a describe block of a postgres fixture. The pools open
 * before the block's tests and close after them.
 *
 * @example
 * const pools = separatePools(fixture, 2, { maxConnections: 8 });
 * it("...", async () => { const [a, b] = pools; ... });
 */
export function separatePools(fixture: DatabaseFixture, count: number, options: { maxConnections?: number } = {}): Database[] {
  const pools: Database[] = [];
  beforeAll(async () => {
    if (!fixture.url || !fixture.schema) throw new Error("separatePools() needs a postgres fixture");
    for (let i = 0; i < count; i++) {
      pools.push(await openDatabase({ url: fixture.url, schema: fixture.schema, maxConnections: options.maxConnections ?? 8 }));
    }
  });
  afterAll(async () => {
    for (const pool of pools.splice(0)) await pool.close();
  });
  return pools;
}
