import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, describe } from "vitest";
import { openDatabase, type Database } from "../db/index.js";

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
          database = await openDatabase(await emptyPGlite());
        }
      });
      afterAll(async () => {
        await database?.close();
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
