import { Migrator, sql, type Kysely, type KyselyPlugin, type RootOperationNode } from "kysely";
import { beforeAll, expect, it } from "vitest";
import { defineMigrations, migrateToLatest, migrationTableName } from "./migrations.js";
import { describeEachDatabase } from "../testing/each-database.js";

describeEachDatabase("database", (fixture) => {
  beforeAll(async () => {
    await migrateToLatest(fixture.database.db, [
      defineMigrations("t_items", {
        t_0001_items: {
          up: async (db) => {
            await db.schema
              .createTable("items")
              .addColumn("id", "serial", (c) => c.primaryKey())
              .addColumn("qty", "integer", (c) => c.notNull().check(sql`qty >= 0`))
              .execute();
          },
        },
      }),
    ]);
  });

  it("runs migrations once and queries through kysely", async () => {
    const { db } = fixture.database;
    await db.insertInto("items").values({ qty: 2 }).execute();
    const rows = await db.selectFrom("items").select(["qty"]).execute();
    expect(rows).toEqual([{ qty: 2 }]);
  });

  it("rolls back a failed transaction and enforces check constraints", async () => {
    const { db } = fixture.database;
    await expect(
      db.transaction().execute(async (trx) => {
        await trx.insertInto("items").values({ qty: 5 }).execute();
        await trx.insertInto("items").values({ qty: -1 }).execute();
      }),
    ).rejects.toThrow(/check/i);
    const rows = await db.selectFrom("items").select(["qty"]).where("qty", "=", 5).execute();
    expect(rows).toEqual([]);
  });

  it("serialises concurrent transactions without losing updates", async () => {
    const { db } = fixture.database;
    const [{ id }] = await db.insertInto("items").values({ qty: 0 }).returning("id").execute() as [{ id: number }];
    await Promise.all(
      Array.from({ length: 20 }, () =>
        db.transaction().execute(async (trx) => {
          const row = await trx.selectFrom("items").select("qty").where("id", "=", id).forUpdate().executeTakeFirstOrThrow();
          await trx.updateTable("items").set({ qty: row.qty + 1 }).where("id", "=", id).execute();
        }),
      ),
    );
    const row = await db.selectFrom("items").select("qty").where("id", "=", id).executeTakeFirstOrThrow();
    expect(row.qty).toBe(20);
  });

  it("refuses a duplicate migration name", async () => {
    const m = { up: async () => {} };
    await expect(migrateToLatest(fixture.database.db, [defineMigrations("t_a", { a: m }), defineMigrations("t_b", { a: m })])).rejects.toThrow(/Duplicate/);
    await expect(migrateToLatest(fixture.database.db, [defineMigrations("t_a", { a: m }), defineMigrations("t_a", { b: m })])).rejects.toThrow(/twice/);
  });

  it("refuses a module name that is not a plain identifier", () => {
    expect(() => defineMigrations("x; drop table users", {})).toThrow(/Invalid migration module name/);
  });
});

/** A plugin that records the kind of every statement run through the handle it is added to. */
function recordQueries(seen: string[]): KyselyPlugin {
  return {
    transformQuery: ({ node }: { node: RootOperationNode }) => {
      seen.push(node.kind);
      return node;
    },
    transformResult: async ({ result }) => result,
  };
}

/** The migration lock tables in the current schema whose names match a LIKE pattern. */
async function lockTables(db: Kysely<any>, pattern: string): Promise<string[]> {
  const { rows } = await sql<{ name: string }>`select table_name as name from information_schema.tables
    where table_schema = current_schema() and table_name like ${pattern} and table_name like '%\_lock' order by 1`.execute(db);
  return rows.map((r) => r.name);
}

/** A migration that creates one table, and remembers that it ran. */
function table(name: string, ran: string[]) {
  return {
    up: async (db: Kysely<any>) => {
      ran.push(name);
      await db.schema.createTable(name).addColumn("id", "integer").execute();
    },
  };
}

describeEachDatabase("migrations per module", (fixture) => {
  it("ships a new migration in an early-sorting module after later-sorting modules have run", async () => {
    const { db } = fixture.database;
    const ran: string[] = [];
    const auth1 = { m_auth_0001: table("m_auth_a", ran) };
    const budgets1 = { m_budgets_0001: table("m_budgets_a", ran) };
    await migrateToLatest(db, [defineMigrations("m_auth", auth1), defineMigrations("m_budgets", budgets1)]);
    // A later release adds a migration to the module whose names sort first.
    const reports = await migrateToLatest(db, [
      defineMigrations("m_auth", { ...auth1, m_auth_0004: table("m_auth_b", ran) }),
      defineMigrations("m_budgets", budgets1),
    ]);
    expect(ran).toEqual(["m_auth_a", "m_budgets_a", "m_auth_b"]);
    expect(reports.map((r) => [r.module, r.results.map((x) => x.migrationName)])).toEqual([
      ["m_auth", ["m_auth_0004"]],
      ["m_budgets", []],
    ]);
    const tables = await sql<{ table_name: string }>`select table_name from information_schema.tables
      where table_schema = current_schema() and table_name like 'm\_%migrations%' order by 1`.execute(db);
    expect(tables.rows.map((r) => r.table_name)).toEqual([
      migrationTableName("m_auth"),
      `${migrationTableName("m_auth")}_lock`,
      migrationTableName("m_budgets"),
      `${migrationTableName("m_budgets")}_lock`,
    ]);
  });

  it("upgrades a database migrated with the shared table of earlier versions in place", async () => {
    const { db } = fixture.database;
    const ran: string[] = [];
    const auth1 = { u_auth_0001: table("u_auth_a", ran) };
    const budgets1 = { u_budgets_0001: table("u_budgets_a", ran) };
    const host1 = { app_0001_runs: table("u_app_runs", ran) };
    // Earlier versions ran every module's migrations through one kysely table.
    const legacy = new Migrator({
      db,
      provider: { getMigrations: async () => ({ ...auth1, ...budgets1, ...host1 }) },
      migrationTableName: "u_legacy_migrations",
      migrationLockTableName: "u_legacy_migrations_lock",
      migrationTableSchema: (await sql<{ s: string }>`select current_schema() as s`.execute(db)).rows[0]!.s,
    });
    expect((await legacy.migrateToLatest()).error).toBeUndefined();
    expect(ran).toEqual(["u_app_runs", "u_auth_a", "u_budgets_a"]);

    await migrateToLatest(
      db,
      [
        defineMigrations("u_auth", { ...auth1, u_auth_0002: table("u_auth_b", ran) }),
        defineMigrations("u_budgets", budgets1),
        defineMigrations("u_app", { ...host1, app_0002_more: table("u_app_more", ran) }),
      ],
      { legacyTableName: "u_legacy_migrations" },
    );
    // Nothing already run runs again; only the new migrations do.
    expect(ran).toEqual(["u_app_runs", "u_auth_a", "u_budgets_a", "u_auth_b", "u_app_more"]);
    const adopted = await db.selectFrom(migrationTableName("u_budgets")).select("name").execute();
    expect(adopted).toEqual([{ name: "u_budgets_0001" }]);
  });

  it("reads an up-to-date database in two queries, with no Migrator, lock or DDL", async () => {
    const { db } = fixture.database;
    const ran: string[] = [];
    const sets = [
      defineMigrations("f_auth", { f_auth_0001: table("f_auth_a", ran) }),
      defineMigrations("f_credits", { f_credits_0001: table("f_credits_a", ran), f_credits_0002: table("f_credits_b", ran) }),
      defineMigrations("f_app", { f_app_0001: table("f_app_a", ran) }),
    ];
    await migrateToLatest(db, sets);
    // Without their lock tables a Migrator would have to create them again; nothing may.
    for (const module of ["f_auth", "f_credits", "f_app"]) await db.schema.dropTable(`${migrationTableName(module)}_lock`).execute();
    const seen: string[] = [];
    const reports = await migrateToLatest(db.withPlugin(recordQueries(seen)), sets);
    expect(reports).toEqual([
      { module: "f_auth", results: [] },
      { module: "f_credits", results: [] },
      { module: "f_app", results: [] },
    ]);
    expect(seen).toEqual(["RawNode", "RawNode"]);
    expect(ran).toEqual(["f_auth_a", "f_credits_a", "f_credits_b", "f_app_a"]);
    expect(await lockTables(db, "f\\_%")).toEqual([]);
  });

  it("still runs a pending migration of any module through its Migrator, under its lock", async () => {
    const { db } = fixture.database;
    const ran: string[] = [];
    const auth = { p_auth_0001: table("p_auth_a", ran) };
    const credits = { p_credits_0001: table("p_credits_a", ran) };
    const app = { p_app_0001: table("p_app_a", ran) };
    await migrateToLatest(db, [defineMigrations("p_auth", auth), defineMigrations("p_credits", credits), defineMigrations("p_app", app)]);
    // A later release adds one migration, to the module in the middle; three processes start at once.
    const next = [
      defineMigrations("p_auth", auth),
      defineMigrations("p_credits", { ...credits, p_credits_0002: table("p_credits_b", ran) }),
      defineMigrations("p_app", app),
    ];
    const reports = await Promise.all([migrateToLatest(db, next), migrateToLatest(db, next), migrateToLatest(db, next)]);
    expect(ran).toEqual(["p_auth_a", "p_credits_a", "p_app_a", "p_credits_b"]);
    expect(reports.flatMap((r) => r.flatMap((m) => m.results.map((x) => `${m.module}/${x.migrationName}`)))).toEqual(["p_credits/p_credits_0002"]);
    expect(await db.selectFrom(migrationTableName("p_credits")).select("name").orderBy("name").execute()).toEqual([
      { name: "p_credits_0001" },
      { name: "p_credits_0002" },
    ]);
    // Then the database is up to date again: the next start only looks.
    const seen: string[] = [];
    await migrateToLatest(db.withPlugin(recordQueries(seen)), next);
    expect(seen).toEqual(["RawNode", "RawNode"]);
  });

  it("leaves a recorded migration that no module defines to the Migrator, which refuses it", async () => {
    const { db } = fixture.database;
    const ran: string[] = [];
    await migrateToLatest(db, [defineMigrations("g_mod", { g_0001: table("g_a", ran), g_0002: table("g_b", ran) })]);
    await expect(migrateToLatest(db, [defineMigrations("g_mod", { g_0001: table("g_a", ran) })])).rejects.toThrow(/g_mod/);
  });

  it("runs each module under its own lock, so concurrent starts migrate once", async () => {
    const { db } = fixture.database;
    const ran: string[] = [];
    const set = defineMigrations("c_mod", { c_0001: table("c_once", ran) });
    await Promise.all([migrateToLatest(db, [set]), migrateToLatest(db, [set]), migrateToLatest(db, [set])]);
    expect(ran).toEqual(["c_once"]);
  });
});

describeEachDatabase("migrations beside other sessions' DDL", (fixture) => {
  // PGlite has one session, so there is no other session's DDL to meet.
  it.skipIf(fixture.kind !== "postgres")("migrates while another session creates and drops schemas (tenants, other test files)", async () => {
    const { default: pg } = await import("pg");
    const churn = new pg.Client({ connectionString: fixture.url });
    await churn.connect();
    let stop = false;
    let dropped = 0;
    // Schemas with tables come and go as fast as one connection can make them.
    const churning = (async () => {
      for (let i = 0; !stop; i++) {
        const name = `${fixture.schema}_churn_${i % 4}`;
        await churn.query(`create schema if not exists "${name}"; create table if not exists "${name}".t (id int, v text)`);
        await churn.query(`drop schema "${name}" cascade`);
        dropped++;
      }
    })();
    try {
      const { db } = fixture.database;
      for (let round = 0; round < 60; round++) {
        const ran: string[] = [];
        await migrateToLatest(db, [defineMigrations(`r_${round}`, { [`r_${round}_0001`]: table(`r_t_${round}`, ran) })]);
        expect(ran).toEqual([`r_t_${round}`]);
      }
    } finally {
      stop = true;
      await churning;
      await churn.end();
    }
    expect(dropped).toBeGreaterThan(10);
  });
});
