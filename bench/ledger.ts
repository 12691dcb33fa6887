// Reserve+settle pairs per second on the credits ledger with 32 concurrent clients, next to
// pgbench's TPC-B-like tps with 32 clients on the same PostgreSQL database, in one run.
// Run: npx tsx bench/ledger.ts   (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test;
// SECONDS per measurement, default 10; SHARED_WALLET=1 to have every client spend from one wallet;
// SPEND=1 to also measure the spend protocol, wallet plus a user and a team budget per pair)
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import pg from "pg";
import {
  budgetMigrations,
  createKyselyBudgets,
  createKyselyLedger,
  createSpend,
  creditMigrations,
  migrateToLatest,
  openDatabase,
  spendMigrations,
} from "../packages/gateway-kit/src/index.js";

const run = promisify(execFile);
const URL_ = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const CLIENTS = 32;
const SECONDS = Number(process.env.SECONDS ?? 10);
const SHARED = process.env.SHARED_WALLET === "1";
const SPEND = process.env.SPEND === "1";
const LEDGER_SCHEMA = "bench_ledger";
const PGBENCH_SCHEMA = "bench_pgbench";
const PGBENCH = process.env.PGBENCH ?? "/usr/bin/pgbench";

async function admin<R extends pg.QueryResultRow = pg.QueryResultRow>(statement: string): Promise<R[]> {
  const client = new pg.Client({ connectionString: URL_ });
  await client.connect();
  try {
    return (await client.query<R>(statement)).rows;
  } finally {
    await client.end();
  }
}

/**
 * Reserve+settle pairs per second: on the ledger alone, or (`withSpend`) through `createSpend`,
 * each pair holding and settling the wallet and two budgets (the client's user and team) at once.
 */
async function benchLedger(withSpend = false): Promise<{ pairsPerSecond: number; pairs: number; refused: number; ok: boolean }> {
  await admin(`drop schema if exists ${LEDGER_SCHEMA} cascade`);
  const database = await openDatabase({ url: URL_, schema: LEDGER_SCHEMA, maxConnections: CLIENTS });
  try {
    await migrateToLatest(database.db, [creditMigrations, budgetMigrations, spendMigrations]);
    const ledger = createKyselyLedger(database.db);
    const budgets = createKyselyBudgets(database.db);
    const spend = createSpend({ db: database.db, ledger, budgets });
    for (let i = 0; i < CLIENTS; i++) {
      for (const kind of ["user", "team"] as const) {
        await budgets.setBudget({ scope: { kind, id: `bench_${kind}_${i}` }, period: "monthly", limit: 1_000_000_000_000 });
      }
    }
    const wallets: string[] = [];
    for (let i = 0; i < (SHARED ? 1 : CLIENTS); i++) {
      const wallet = await ledger.openWallet({ userId: `bench_user_${i}` });
      await ledger.grant({ account: wallet.id, amount: 1_000_000_000_000, idempotencyKey: `bench:grant:${i}` });
      wallets.push(wallet.id);
    }
    let pairs = 0;
    let refused = 0;
    let measuring = false;
    let stop = false;
    const client = async (n: number) => {
      const account = wallets[SHARED ? 0 : n]!;
      for (let i = 0; !stop; i++) {
        try {
          if (withSpend) {
            const scopes = [{ kind: "user" as const, id: `bench_user_${n}` }, { kind: "team" as const, id: `bench_team_${n}` }];
            const hold = await spend.reserve({ wallet: account, estimate: 50_000, idempotencyKey: `bench:${n}:${i}`, ttlMs: 60_000, scopes });
            await spend.settle(hold.handle, 31_337);
          } else {
            const hold = await ledger.reserve({ account, amount: 50_000, idempotencyKey: `bench:${n}:${i}`, ttlMs: 60_000 });
            await ledger.settle(hold.id, 31_337);
          }
          if (measuring) pairs += 1;
        } catch (error) {
          refused += 1;
          if (refused > 100) throw error;
        }
      }
    };
    const clients = Array.from({ length: CLIENTS }, (_, n) => client(n));
    await new Promise((resolve) => setTimeout(resolve, 2_000)); // warm-up
    measuring = true;
    const started = process.hrtime.bigint();
    await new Promise((resolve) => setTimeout(resolve, SECONDS * 1_000));
    measuring = false;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const counted = pairs;
    stop = true;
    await Promise.all(clients);
    const check = await ledger.verify();
    return { pairsPerSecond: counted / seconds, pairs: counted, refused, ok: check.ok };
  } finally {
    await database.close();
    await admin(`drop schema if exists ${LEDGER_SCHEMA} cascade`);
  }
}

async function benchPgbench(): Promise<{ tps: number; output: string }> {
  const url = new globalThis.URL(URL_);
  const env = {
    ...process.env,
    PGHOST: url.hostname,
    PGPORT: url.port || "5432",
    PGUSER: decodeURIComponent(url.username || "postgres"),
    PGDATABASE: url.pathname.slice(1),
    // pgbench's tables go to their own schema of the same database.
    PGOPTIONS: `-c search_path=${PGBENCH_SCHEMA}`,
  };
  if (url.password) Object.assign(env, { PGPASSWORD: decodeURIComponent(url.password) });
  await admin(`drop schema if exists ${PGBENCH_SCHEMA} cascade`);
  await admin(`create schema ${PGBENCH_SCHEMA}`);
  try {
    await run(PGBENCH, ["-i", "-q", "-s", "1"], { env });
    const { stdout } = await run(PGBENCH, ["-c", String(CLIENTS), "-j", "2", "-T", String(SECONDS)], { env, maxBuffer: 16 * 1024 * 1024 });
    const match = /tps = ([\d.]+) \(without initial connection time\)/.exec(stdout) ?? /tps = ([\d.]+)/.exec(stdout);
    if (!match) throw new Error(`Could not read tps from pgbench output:\n${stdout}`);
    return { tps: Number(match[1]), output: stdout };
  } finally {
    await admin(`drop schema if exists ${PGBENCH_SCHEMA} cascade`);
  }
}

const ledgerResult = await benchLedger();
const spendResult = SPEND ? await benchLedger(true) : undefined;
const pgbenchResult = await benchPgbench();
const rows = await admin<{ version: string }>("select version()");

console.log(`PostgreSQL: ${rows[0]!.version.split(",")[0]}`);
console.log(`clients: ${CLIENTS}, ${SECONDS} s each, wallets: ${SHARED ? "one shared" : "one per client"}`);
console.log(`ledger reserve+settle: ${ledgerResult.pairsPerSecond.toFixed(0)} pairs/s (${ledgerResult.pairs} pairs, ${(ledgerResult.pairsPerSecond * 2).toFixed(0)} ledger transactions/s, ledger balanced: ${ledgerResult.ok})`);
if (spendResult) {
  console.log(`spend reserve+settle (wallet + 2 budgets): ${spendResult.pairsPerSecond.toFixed(0)} pairs/s (${spendResult.pairs} pairs, ledger balanced: ${spendResult.ok})`);
  console.log(`spend / ledger-only: ${(spendResult.pairsPerSecond / ledgerResult.pairsPerSecond).toFixed(2)}`);
}
console.log(`pgbench (TPC-B-like, scale 1, -c ${CLIENTS} -j 2): ${pgbenchResult.tps.toFixed(0)} tps`);
console.log(`ratio: ${(ledgerResult.pairsPerSecond / pgbenchResult.tps).toFixed(2)} reserve+settle pairs per pgbench transaction`);
if (!ledgerResult.ok || (spendResult && !spendResult.ok)) process.exitCode = 1;
