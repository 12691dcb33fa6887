import { sql, type Kysely } from "kysely";
import { expect, it } from "vitest";
import { describeEachDatabase } from "./each-database.js";

// The suites below run in order in one process: each PGlite suite starts on the database the
// previous one finished with, emptied, or on a new one when it could not be emptied.
const started: string[] = [];
const startTime = async (db: Kysely<any>) => String((await sql<{ at: Date }>`select pg_postmaster_start_time() as at`.execute(db)).rows[0]!.at.getTime());

/** Every relation, routine, type and sequence outside the system schemas, and what the session holds. */
async function leftovers(db: Kysely<any>) {
  const { rows } = await sql<Record<string, unknown>>`
    select
      (select count(*)::int from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema') as relations,
      (select count(*)::int from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema') as routines,
      (select count(*)::int from pg_type t join pg_namespace n on n.oid = t.typnamespace where n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema') as types,
      (select string_agg(nspname, ',' order by nspname) from pg_namespace where nspname not like 'pg\\_%' and nspname <> 'information_schema') as schemas,
      (select count(*)::int from pg_prepared_statements) as prepared,
      (select count(*)::int from pg_locks where locktype = 'advisory') as advisory_locks,
      current_setting('search_path') as search_path,
      current_setting('statement_timeout') as statement_timeout`.execute(db);
  return rows[0];
}
const EMPTY = { relations: 0, routines: 0, types: 0, schemas: "public", prepared: 0, advisory_locks: 0, search_path: "public", statement_timeout: "0" };

describeEachDatabase("each-database: a suite that leaves things behind", (fixture) => {
  it.runIf(fixture.kind === "pglite")("starts on an empty database", async () => {
    const { db } = fixture.database;
    expect(await leftovers(db)).toEqual(EMPTY);
    started.push(await startTime(db));
  });

  it.runIf(fixture.kind === "pglite")("leaves schemas, tables, functions, session settings, a lock and an open transaction", async () => {
    const { db } = fixture.database;
    await sql`create schema extra`.execute(db);
    await sql`create table extra.t (id serial primary key, body text)`.execute(db);
    await sql`create type public.mood as enum ('a', 'b')`.execute(db);
    await sql`create table public.u (id int primary key, mood public.mood)`.execute(db);
    await sql`create function public.f() returns int language sql as 'select 1'`.execute(db);
    await sql`create temporary table scratch (x int)`.execute(db);
    await sql`prepare leftover as select 1`.execute(db);
    await sql`select pg_advisory_lock(42)`.execute(db);
    await sql`set search_path to extra`.execute(db);
    await sql`set statement_timeout to 5000`.execute(db);
    await sql`begin`.execute(db);
    await sql`insert into t (body) values ('never committed')`.execute(db);
    expect(await leftovers(db)).not.toEqual(EMPTY);
  });
});

describeEachDatabase("each-database: the next suite", (fixture) => {
  it.runIf(fixture.kind === "pglite")("gets the same PGlite, emptied as a new one", async () => {
    const { db } = fixture.database;
    expect(await leftovers(db)).toEqual(EMPTY);
    started.push(await startTime(db));
    expect(started).toHaveLength(2);
    expect(started[1]).toBe(started[0]);
    // Usable as a new database: the same names can be made again.
    await sql`create table public.u (id int primary key)`.execute(db);
    await sql`create schema extra`.execute(db);
  });
});

describeEachDatabase("each-database: a suite that adds a role", (fixture) => {
  it.runIf(fixture.kind === "pglite")("creates a role, which emptying the schemas does not remove", async () => {
    const { db } = fixture.database;
    expect(await leftovers(db)).toEqual(EMPTY);
    started.push(await startTime(db));
    expect(started[2]).toBe(started[0]);
    await sql`create role keen_each_database_leftover`.execute(db);
  });
});

describeEachDatabase("each-database: the suite after a role was added", (fixture) => {
  it.runIf(fixture.kind === "pglite")("gets a new PGlite without that role", async () => {
    const { db } = fixture.database;
    expect(await leftovers(db)).toEqual(EMPTY);
    const roles = await sql<{ n: number }>`select count(*)::int as n from pg_roles where rolname = 'keen_each_database_leftover'`.execute(db);
    expect(roles.rows[0]!.n).toBe(0);
    started.push(await startTime(db));
    expect(started[3]).not.toBe(started[0]);
  });
});
