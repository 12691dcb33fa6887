import { PGlite } from "@electric-sql/pglite";
import { Kysely, sql } from "kysely";
import { expect, it } from "vitest";
import { PGliteDialect } from "./pglite-dialect.js";

it("closes its PGlite on destroy unless told the caller keeps it (closeOnDestroy: false)", async () => {
  const pglite = await PGlite.create();
  try {
    const borrowed = new Kysely<any>({ dialect: new PGliteDialect(pglite, { closeOnDestroy: false }) });
    await sql`create table kept (n int)`.execute(borrowed);
    await borrowed.destroy();
    expect(pglite.closed).toBe(false);

    // The instance goes on with another Kysely, its data intact; that one owns it and closes it.
    const owner = new Kysely<any>({ dialect: new PGliteDialect(pglite) });
    await sql`insert into kept values (1)`.execute(owner);
    expect((await sql<{ n: number }>`select n from kept`.execute(owner)).rows).toEqual([{ n: 1 }]);
    await owner.destroy();
    expect(pglite.closed).toBe(true);
  } finally {
    if (!pglite.closed) await pglite.close();
  }
});
