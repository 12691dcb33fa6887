import type { Kysely } from "kysely";
import pg from "pg";
import { expect, it } from "vitest";
import { api, describeEachDatabase, eventually, signup, TEST_DATABASE_URL, useTestServer, type Account } from "../testing/harness.js";

const PASSWORD = "correct horse battery staple";

/**
 * Enrolling a second factor while the account is erased: the factor's secret (or an SMS
 * factor's phone number) is personal data the erasure deletes, so a factor must not be written
 * after the erasure. gateway-kit's auth stores write factors and recovery codes for a live user
 * only (`lockLiveUser` in the writing transaction), like API keys: an enrolment racing the
 * erasure lands before it, or is refused with 410 `account_erased`.
 */
describeEachDatabase("attack: a second factor enrolled while the account is erased", (database) => {
  const t = useTestServer(() => ({ ...database.settings, workers: 0, rateLimit: 100_000 }));
  const db = () => t.server.database.db as Kysely<any>;
  const factors = async (userId: string) => (await db().selectFrom("mfa_factors").select("id").where("user_id", "=", userId).execute()).length;
  const erase = (user: Account) => api(t.url, "/v1/me", { method: "DELETE", headers: user.headers, body: { password: PASSWORD } });
  const enrol = (user: Account) => api(t.url, "/v1/auth/mfa/totp", { headers: user.headers, body: { password: PASSWORD } });

  it.runIf(database.kind === "postgres")("an enrolment that read the account before the erasure and writes after it is refused", async () => {
    const user = await signup(t.url);
    const holder = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await holder.connect();
    try {
      await holder.query(`set search_path to "${database.settings.databaseSchema!}"`);
      const waits = async () =>
        (await holder.query<{ pid: number; on: string }>(`select pid, transactionid::text as on from pg_locks where locktype = 'transactionid' and not granted and pid <> pg_backend_pid()`)).rows;
      await holder.query("begin");
      // Holds the erasure inside its transaction once its contributors ran: its last step appends
      // to the global audit chain, whose head this transaction holds.
      await holder.query(`insert into audit_heads (tenant_key, seq, hash) values ('', 0, repeat('0', 64)) on conflict do nothing`);
      await holder.query(`select seq from audit_heads where tenant_key = '' for update`);
      const top = (await holder.query(`select transactionid::text as xid from pg_locks where pid = pg_backend_pid() and locktype = 'transactionid'`)).rows[0].xid as string;

      const erasure = erase(user);
      const eraser = (await eventually(async () => (await waits()).find((w) => w.on === top), 20_000, "the erasure to reach its audit record")).pid;
      const eraserXids = (await holder.query(`select transactionid::text as xid from pg_locks where pid = $1 and locktype = 'transactionid' and granted`, [eraser])).rows.map((r) => r.xid as string);
      // The enrolment's session still reads as live (the erasure has not committed): it goes on
      // until it finishes or waits for the erasure.
      let enrolled: { status: number; body: any } | undefined;
      const enrolment = enrol(user).then((res) => (enrolled = res));
      await eventually(async () => enrolled !== undefined || (await waits()).some((w) => eraserXids.includes(w.on)), 20_000, "the enrolment to finish or wait");
      await holder.query("commit");

      const [erased] = await Promise.all([erasure, enrolment]);
      expect(erased.status, JSON.stringify(erased.body)).toBe(200);
      expect([401, 410], JSON.stringify(enrolled!.body)).toContain(enrolled!.status);
      if (enrolled!.status === 410) expect(enrolled!.body.error.code).toBe("account_erased");
      expect(await factors(user.userId)).toBe(0);
    } finally {
      await holder.query("rollback").catch(() => undefined);
      await holder.end();
    }
  }, 60_000);

  it("enrolments sent at once with the erasure leave no factor of the erased user", async () => {
    const statuses = new Set<number>();
    for (let round = 0; round < 3; round++) {
      const user = await signup(t.url);
      const after = (ms: number) => new Promise((r) => setTimeout(r, ms));
      const [erased, ...enrolled] = await Promise.all([erase(user), ...[0, 10, 30, 60].map((ms) => after(ms).then(() => enrol(user)))]);
      expect(erased.status, JSON.stringify(erased.body)).toBe(200);
      for (const res of enrolled) {
        statuses.add(res.status);
        expect([201, 401, 410, 429], JSON.stringify(res.body)).toContain(res.status);
        if (res.status === 410) expect(res.body.error.code).toBe("account_erased");
      }
      expect(await factors(user.userId), `round ${round}`).toBe(0);
    }
    console.log(`${database.kind} enrolments racing the erasure: ${[...statuses].sort().join(", ")}`);
  }, 60_000);
});
