import type { Kysely } from "kysely";
import pg from "pg";
import { expect, it } from "vitest";
import { api, describeEachDatabase, eventually, signup, TEST_DATABASE_URL, useTestServer, type Account } from "../testing/harness.js";

const PASSWORD = "correct horse battery staple";

/**
 * `PUT /v1/budgets` racing `DELETE /v1/me`: a user budget is personal data the erasure deletes,
 * so a budget write must not land after the erasure (or inside it, after its budgets step) and
 * outlive it. The write takes the user's row like every creating request (`lockLiveUser`): it
 * lands before the erasure starts, or it is refused with 410 `account_erased`.
 */
describeEachDatabase("attack: a budget written while the account is erased", (database) => {
  const t = useTestServer(() => ({ ...database.settings, workers: 0, rateLimit: 100_000 }));
  const db = () => t.server.database.db as Kysely<any>;
  const userBudgets = async (userId: string) => (await db().selectFrom("budgets").select("id").where("scope_kind", "=", "user").where("scope_id", "=", userId).execute()).length;
  const erase = (user: Account) => api(t.url, "/v1/me", { method: "DELETE", headers: user.headers, body: { password: PASSWORD } });
  const putBudget = (user: Account, limit: number) => api(t.url, "/v1/budgets", { method: "PUT", headers: user.headers, body: { scope: "user", period: "monthly", limit } });

  it.runIf(database.kind === "postgres")("a budget write that got in before the erasure and writes after the erasure's budgets step does not outlive it", async () => {
    const user = await signup(t.url);
    const schema = database.settings.databaseSchema!;
    const holder = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await holder.connect();
    try {
      await holder.query(`set search_path to "${schema}"`);
      const waits = async () =>
        (await holder.query<{ pid: number; on: string }>(`select pid, transactionid::text as on from pg_locks where locktype = 'transactionid' and not granted and pid <> pg_backend_pid()`)).rows;
      const xidOf = async (pid: number) =>
        (await holder.query<{ xid: string }>(`select transactionid::text as xid from pg_locks where pid = $1 and locktype = 'transactionid' and granted`, [pid])).rows.map((r) => r.xid);
      await holder.query("begin");
      // Holds the erasure inside its transaction once its contributors ran: its last step appends
      // to the global audit chain, whose head this transaction holds.
      await holder.query(`insert into audit_heads (tenant_key, seq, hash) values ('', 0, repeat('0', 64)) on conflict do nothing`);
      await holder.query(`select seq from audit_heads where tenant_key = '' for update`);
      const top = (await holder.query(`select transactionid::text as xid from pg_locks where pid = pg_backend_pid() and locktype = 'transactionid'`)).rows[0].xid as string;
      // Holds the budget write at its insert: the same budget, inserted and not yet committed. The
      // erasure's delete does not see this row, so only the write waits for it.
      await holder.query("savepoint held_write");
      await holder.query(
        `insert into budgets (id, scope_kind, scope_id, period, limit_micros, thresholds, created_at, updated_at) values (gen_random_uuid()::text, 'user', $1, 'monthly', 1, '[]', now(), now())`,
        [user.userId],
      );
      const sub = (await holder.query(`select transactionid::text as xid from pg_locks where pid = pg_backend_pid() and locktype = 'transactionid' and transactionid::text <> $1`, [top])).rows[0].xid as string;

      let written: { status: number; body: any } | undefined;
      const write = putBudget(user, 1_000_000).then((res) => (written = res));
      const writer = (await eventually(async () => (await waits()).find((w) => w.on === sub), 20_000, "the budget write to reach its insert")).pid;
      const writerXids = await xidOf(writer);
      // The erasure now runs until it waits: for this transaction's audit head, or for the
      // write's transaction if the write holds something the erasure needs first.
      const erasure = erase(user);
      const eraser = (await eventually(async () => (await waits()).find((w) => w.pid !== writer && (w.on === top || writerXids.includes(w.on))), 20_000, "the erasure to wait")).pid;
      const eraserXids = await xidOf(eraser);
      // Let the write go on while the erasure's transaction is still open: it finishes, or it
      // (or its request's audit line) waits for the erasure.
      await holder.query("rollback to savepoint held_write");
      await eventually(async () => written !== undefined || (await waits()).some((w) => eraserXids.includes(w.on)), 20_000, "the budget write to finish or wait");
      await holder.query("commit");

      const [erased] = await Promise.all([erasure, write]);
      expect(erased.status, JSON.stringify(erased.body)).toBe(200);
      // Sent before the erasure, so it may land, but then the erasure deletes it.
      expect([200, 410], JSON.stringify(written!.body)).toContain(written!.status);
      expect(await userBudgets(user.userId)).toBe(0);
    } finally {
      await holder.query("rollback").catch(() => undefined);
      await holder.end();
    }
  }, 60_000);

  it("budget writes sent at once with the erasure leave no budget of the erased user", async () => {
    const statuses = new Set<number>();
    for (let round = 0; round < 3; round++) {
      const user = await signup(t.url);
      const after = (ms: number) => new Promise((r) => setTimeout(r, ms));
      const [erased, ...written] = await Promise.all([erase(user), ...[0, 5, 10, 20, 40, 80].map((ms, i) => after(ms).then(() => putBudget(user, 1_000_000 + i)))]);
      expect(erased.status, JSON.stringify(erased.body)).toBe(200);
      for (const res of written) {
        statuses.add(res.status);
        expect([200, 401, 410], JSON.stringify(res.body)).toContain(res.status);
        if (res.status === 410) expect(res.body.error.code).toBe("account_erased");
      }
      expect(await userBudgets(user.userId), `round ${round}`).toBe(0);
    }
    console.log(`${database.kind} budget writes racing the erasure: ${[...statuses].sort().join(", ")}`);
  }, 60_000);
});
