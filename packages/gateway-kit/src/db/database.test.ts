import { sql } from "kysely";
import { beforeAll, expect, it } from "vitest";
import { migrateToLatest } from "./migrations.js";
import { describeEachDatabase } from "../testing/each-database.js";

describeEachDatabase("database", (fixture) => {
  beforeAll(async () => {
    await migrateToLatest(fixture.database.db, [
      {
        t_0001_items: {
          up: async (db) => {
            await db.schema
              .createTable("items")
              .addColumn("id", "serial", (c) => c.primaryKey())
              .addColumn("qty", "integer", (c) => c.notNull().check(sql`qty >= 0`))
              .execute();
          },
        },
      },
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
    await expect(migrateToLatest(fixture.database.db, [{ a: m }, { a: m }])).rejects.toThrow(/Duplicate/);
  });
});
