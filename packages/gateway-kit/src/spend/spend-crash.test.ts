// The database connection dies in the middle of a spend: PostgreSQL terminates the backend of a
// reserve or a settle while it waits half-way through its transaction (after the ledger writes,
// before the budget and spend rows), and drops idle pooled connections under a running process.
// The end state must equal an uninterrupted run: nothing charged twice, nothing lost.
import { randomUUID } from "node:crypto";
import { execFile } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import pg from "pg";
import { beforeAll, describe, expect, it } from "vitest";
import { createKyselyBudgets } from "../budgets/kysely-budgets.js";
import { budgetMigrations } from "../budgets/migrations.js";
import type { BudgetScope, Budgets } from "../budgets/types.js";
import { createKyselyLedger } from "../credits/kysely-ledger.js";
import type { Ledger } from "../credits/ledger.js";
import { creditMigrations } from "../credits/migrations.js";
import { migrateToLatest } from "../db/migrations.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { createSpend } from "./kysely-spend.js";
import { spendMigrations } from "./migrations.js";
import type { Spend } from "./types.js";

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, "../../../..");
const run = promisify(execFile);

describeEachDatabase("spend when the connection dies", (fixture) => {
  if (fixture.kind !== "postgres") {
    it.skip("needs PostgreSQL: PGlite has no backends to terminate", () => {});
    return;
  }
  let ledger: Ledger;
  let budgets: Budgets;
  let spend: Spend;
  beforeAll(async () => {
    const db = fixture.database.db;
    await migrateToLatest(db, [creditMigrations, budgetMigrations, spendMigrations]);
    ledger = createKyselyLedger(db);
    budgets = createKyselyBudgets(db);
    spend = createSpend({ db, ledger, budgets });
  });

  async function setup(balance: number) {
    const scope: BudgetScope = { kind: "team", id: `team-${randomUUID()}` };
    const wallet = await ledger.openWallet({ teamId: scope.id });
    await ledger.grant({ account: wallet.id, amount: balance, idempotencyKey: `g:${wallet.id}` });
    await budgets.setBudget({ scope, period: "monthly", limit: 1_000_000 });
    const state = async () => ({
      wallet: (await ledger.getAccount(wallet.id)).balance,
      hold: (await ledger.getAccount(`hold:${wallet.id}`)).balance,
      spent: (await budgets.status([scope]))[0]!.spent,
    });
    return { wallet, scope, state };
  }

  /**
   * Runs `operation` while another connection holds the budget tables, so the operation stops
   * after its ledger writes; then terminates the operation's backend (the one waiting on that
   * lock) and lets go. Returns how the operation ended.
   */
  async function killMidway<T>(operation: () => Promise<T>): Promise<PromiseSettledResult<T>> {
    const locker = new pg.Client({ connectionString: fixture.url });
    await locker.connect();
    try {
      await locker.query(`set search_path to "${fixture.schema}"`);
      await locker.query("begin");
      await locker.query("lock table budget_spend in access exclusive mode");
      const { rows: me } = await locker.query<{ pid: number }>("select pg_backend_pid() as pid");
      const pending = Promise.allSettled([operation()]);
      let victim: number | undefined;
      for (let i = 0; i < 200 && victim === undefined; i++) {
        const { rows } = await locker.query<{ pid: number }>("select pid from pg_stat_activity where $1 = any(pg_blocking_pids(pid))", [me[0]!.pid]);
        victim = rows[0]?.pid;
        if (victim === undefined) await new Promise((resolve) => setTimeout(resolve, 25));
      }
      expect(victim, "the operation never reached the budget tables").toBeDefined();
      await locker.query("select pg_terminate_backend($1)", [victim]);
      await locker.query("rollback");
      return (await pending)[0]!;
    } finally {
      await locker.end();
    }
  }

  it("loses nothing and holds nothing when reserve's connection dies after the wallet hold, and the retry holds once", async () => {
    for (let round = 0; round < 3; round++) {
      const { wallet, scope, state } = await setup(10_000);
      const key = randomUUID();
      const killed = await killMidway(() => spend.reserve({ wallet: wallet.id, estimate: 4_000, idempotencyKey: key, scopes: [scope] }));
      expect(killed.status).toBe("rejected");
      expect(await state()).toEqual({ wallet: 10_000, hold: 0, spent: 0 });
      const [a, b] = await Promise.all([0, 1].map(() => spend.reserve({ wallet: wallet.id, estimate: 4_000, idempotencyKey: key, scopes: [scope] })));
      expect(a!.handle).toBe(b!.handle);
      expect(await state()).toEqual({ wallet: 6_000, hold: 4_000, spent: 4_000 });
    }
    expect(await ledger.verify()).toMatchObject({ ok: true });
  });

  it("charges once when settle's connection dies after the ledger settle and the settle is retried", async () => {
    for (let round = 0; round < 3; round++) {
      const { wallet, scope, state } = await setup(10_000);
      const hold = await spend.reserve({ wallet: wallet.id, estimate: 4_000, idempotencyKey: randomUUID(), scopes: [scope] });
      const killed = await killMidway(() => spend.settle(hold.handle, 2_500));
      expect(killed.status).toBe("rejected");
      expect(await state()).toEqual({ wallet: 6_000, hold: 4_000, spent: 4_000 });
      const retries = await Promise.all([0, 1, 2].map(() => spend.settle(hold.handle, 2_500)));
      expect(retries.filter((r) => !r.replayed)).toHaveLength(1);
      expect(await state()).toEqual({ wallet: 7_500, hold: 0, spent: 2_500 });
      // Release after settle stays refused.
      await expect(spend.release(hold.handle)).rejects.toMatchObject({ code: "spend_closed" });
    }
    expect(await ledger.verify()).toMatchObject({ ok: true });
  });

  it("returns the whole hold once when release's connection dies half-way and the release is retried", async () => {
    const { wallet, scope, state } = await setup(10_000);
    const hold = await spend.reserve({ wallet: wallet.id, estimate: 4_000, idempotencyKey: randomUUID(), scopes: [scope] });
    expect((await killMidway(() => spend.release(hold.handle))).status).toBe("rejected");
    expect(await state()).toEqual({ wallet: 6_000, hold: 4_000, spent: 4_000 });
    await Promise.all([spend.release(hold.handle), spend.release(hold.handle)]);
    expect(await state()).toEqual({ wallet: 10_000, hold: 0, spent: 0 });
    await expect(spend.settle(hold.handle, 1)).rejects.toMatchObject({ code: "spend_closed" });
  });

  describe("the database drops idle connections", () => {
    it("keeps the process alive and serves the next query from a fresh connection", async () => {
      const child = await run(process.execPath, ["--import", "tsx", join(here, "../db/fixtures/restart-in-child.ts"), fixture.url!, fixture.schema!], { cwd: repoRoot }).catch(
        (error: { code?: number; stderr?: string; stdout?: string }) => ({ stdout: error.stdout ?? "", stderr: `exit ${error.code}: ${error.stderr ?? ""}` }),
      );
      expect(child.stdout, child.stderr).toMatch(/^ok [1-9]/);
    });
  });
});
