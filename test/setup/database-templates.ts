/**
 * Vitest global setup: the empty and migrated databases the suites start from, made once per
 * `vitest run` instead of once per suite. PGlite's initdb takes seconds and the server's
 * migrations about as long again, and dozens of suites each opened a new embedded database.
 *
 * - `KEEN_TEST_PGLITE_DUMP`: a dump of a freshly initialised PGlite (`dumpDataDir`), which
 *   gateway-kit's `describeEachDatabase` loads into every in-memory database it opens.
 * - `KEEN_TEST_SERVER_DB`: a PGlite data folder with every server migration applied, which the
 *   server's `startTestServer` copies under each new data dir.
 *
 * Both are made by the code under test in this run, so a changed migration is in them.
 */
import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { openDatabase } from "@keen/gateway-kit";
import { migrateServer } from "../../packages/server/src/db/migrations.js";

export default async function setup(): Promise<() => Promise<void>> {
  const dir = await mkdtemp(join(tmpdir(), "keen-test-databases-"));
  const empty = await PGlite.create();
  const dump = await empty.dumpDataDir("none");
  await empty.close();
  const dumpPath = join(dir, "empty-pglite.tar");
  await writeFile(dumpPath, Buffer.from(await dump.arrayBuffer()));

  const serverDb = join(dir, "server-db");
  const scratch = join(dir, "server-db-building");
  const database = await openDatabase({ dataDir: scratch, loadDataDir: dump });
  try {
    await migrateServer(database.db as never);
  } finally {
    await database.close();
  }
  // Complete before it is named, so no suite copies a half-made folder.
  await rename(scratch, serverDb);

  process.env.KEEN_TEST_PGLITE_DUMP = dumpPath;
  process.env.KEEN_TEST_SERVER_DB = serverDb;
  return async () => {
    await rm(dir, { recursive: true, force: true });
  };
}
