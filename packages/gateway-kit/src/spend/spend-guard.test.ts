import { randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import Koa from "koa";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createKyselyBudgets } from "../budgets/kysely-budgets.js";
import { budgetMigrations } from "../budgets/migrations.js";
import type { Budgets } from "../budgets/types.js";
import { createKyselyLedger } from "../credits/kysely-ledger.js";
import type { Ledger } from "../credits/ledger.js";
import { creditMigrations } from "../credits/migrations.js";
import { migrateToLatest } from "../db/migrations.js";
import { ConfigError } from "../errors.js";
import { errorHandler, HttpError } from "../http-error.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { createSpend } from "./kysely-spend.js";
import { spendMigrations } from "./migrations.js";
import { spendGuard } from "./spend-guard.js";
import type { Spend } from "./types.js";

describeEachDatabase("spendGuard", (fixture) => {
  let ledger: Ledger;
  let budgets: Budgets;
  let spend: Spend;
  let server: Server;
  let base: string;
  /** How often the route ran per spend handle: each run is work someone will settle. */
  const runs = new Map<string, number>();

  beforeAll(async () => {
    const db = fixture.database.db;
    await migrateToLatest(db, [creditMigrations, budgetMigrations, spendMigrations]);
    ledger = createKyselyLedger(db);
    budgets = createKyselyBudgets(db);
    spend = createSpend({ db, ledger, budgets });
    const app = new Koa();
    app.use(errorHandler());
    // The principal as authenticate() would leave it; the test names user and team in headers.
    app.use(async (ctx, next) => {
      ctx.state.principal = { userId: ctx.get("x-user"), teamId: ctx.get("x-team") || undefined, via: "api_key", scopes: [] };
      await next();
    });
    app.use(spendGuard({ spend, estimate: (ctx) => (ctx.query.estimate === "junk" ? ("lots" as never) : Number(ctx.query.estimate ?? 1_000)) }));
    app.use(async (ctx) => {
      if (ctx.query.fail) throw new HttpError(503, "queue_full", "Try again");
      const handle = ctx.state.spend!.handle;
      runs.set(handle, (runs.get(handle) ?? 0) + 1);
      ctx.status = 202;
      ctx.body = { spend: ctx.state.spend };
    });
    server = createServer(app.callback());
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((resolve) => server?.close(resolve)));

  const funded = async (amount: number, limits: { team?: number; user?: number } = {}) => {
    const userId = `u_${randomUUID()}`;
    const teamId = `t_${randomUUID()}`;
    const wallet = await ledger.openWallet({ teamId });
    await ledger.grant({ account: wallet.id, amount, idempotencyKey: `g:${teamId}` });
    if (limits.team !== undefined) await budgets.setBudget({ scope: { kind: "team", id: teamId }, period: "monthly", limit: limits.team });
    if (limits.user !== undefined) await budgets.setBudget({ scope: { kind: "user", id: userId }, period: "monthly", limit: limits.user });
    const call = async (query = "", headers: Record<string, string> = {}) => {
      const res = await fetch(`${base}/v1/runs${query}`, { method: "POST", headers: { "x-user": userId, "x-team": teamId, ...headers } });
      return { status: res.status, body: (await res.json()) as any };
    };
    const state = async () => ({
      wallet: (await ledger.getAccount(wallet.id)).balance,
      hold: (await ledger.getAccount(`hold:${wallet.id}`)).balance,
      spent: (await budgets.status([{ kind: "team", id: teamId }, { kind: "user", id: userId }])).map((s) => s.spent),
    });
    return { userId, teamId, wallet, call, state };
  };

  it("holds the estimate in the team wallet and the principal's budgets, and hands one handle to the route", async () => {
    const { wallet, call, state } = await funded(5_000, { team: 10_000, user: 4_000 });
    const res = await call("?estimate=1200");
    expect(res.status).toBe(202);
    expect(res.body.spend).toMatchObject({ accountId: wallet.id, estimate: 1_200, status: "open", remaining: 2_800 });
    expect(await state()).toEqual({ wallet: 3_800, hold: 1_200, spent: [1_200, 1_200] });
    expect(await spend.settle(res.body.spend.handle, 1_000)).toMatchObject({ charged: 1_000 });
    expect(await state()).toEqual({ wallet: 4_000, hold: 0, spent: [1_000, 1_000] });
  });

  it("answers 402 insufficient_credits or 402 budget_exceeded, holding nothing either way", async () => {
    const poor = await funded(500, { team: 10_000 });
    const res = await poor.call("?estimate=501");
    expect(res.status).toBe(402);
    expect(res.body.error).toMatchObject({ code: "insufficient_credits", details: { available: 500, requested: 501 } });
    expect(await poor.state()).toEqual({ wallet: 500, hold: 0, spent: [0] });

    const capped = await funded(5_000, { team: 10_000, user: 300 });
    const refused = await capped.call("?estimate=301");
    expect(refused.status).toBe(402);
    expect(refused.body.error).toMatchObject({ code: "budget_exceeded", details: { scope: { kind: "user", id: capped.userId }, remaining: 300 } });
    expect(await capped.state()).toEqual({ wallet: 5_000, hold: 0, spent: [0, 0] });
  });

  it("releases wallet and budget holds together when the route fails", async () => {
    const { call, state } = await funded(2_000, { team: 10_000 });
    const res = await call("?estimate=1500&fail=1");
    expect(res.status).toBe(503);
    expect(await state()).toEqual({ wallet: 2_000, hold: 0, spent: [0] });
  });

  it("runs the route once per Idempotency-Key: a retry gets 409 idempotency_replayed naming the first hold, and never releases it", async () => {
    const { call, state } = await funded(2_000, { team: 10_000 });
    const first = await call("?estimate=700", { "idempotency-key": "abc" });
    expect(first.status).toBe(202);
    const handle = first.body.spend.handle as string;
    const again = await call("?estimate=700", { "idempotency-key": "abc" });
    expect(again.status).toBe(409);
    expect(again.body.error).toMatchObject({ code: "idempotency_replayed", details: { handle, status: "open" } });
    // The attack: retries that reuse the key and make the route fail, all at once.
    const retries = await Promise.all(Array.from({ length: 10 }, () => call("?estimate=700&fail=1", { "idempotency-key": "abc" })));
    expect(retries.map((r) => r.status)).toEqual(Array(10).fill(409));
    expect(await state()).toEqual({ wallet: 1_300, hold: 700, spent: [700] });
    expect(runs.get(handle)).toBe(1);
    await spend.settle(handle, 650);
    const late = await call("?estimate=700", { "idempotency-key": "abc" });
    expect(late.status).toBe(409);
    expect(late.body.error.code).toBe("spend_closed");
    const different = await call("?estimate=900", { "idempotency-key": "abc" });
    expect(different.body.error.code).toBe("idempotency_conflict");
    expect(await state()).toEqual({ wallet: 1_350, hold: 0, spent: [650] });
  });

  it("gives 200 concurrent copies of one request one hold and one run of the route: the work is paid for once and done once", async () => {
    const { call, state } = await funded(100_000, { team: 1_000_000 });
    const answers = await Promise.all(Array.from({ length: 200 }, () => call("?estimate=1000", { "idempotency-key": "same-run" })));
    const accepted = answers.filter((a) => a.status === 202);
    expect(accepted).toHaveLength(1);
    const handle = accepted[0]!.body.spend.handle as string;
    expect(answers.filter((a) => a.status !== 202).every((a) => a.status === 409 && a.body.error.details?.handle === handle)).toBe(true);
    expect(runs.get(handle)).toBe(1);
    // Each run of the route is work a worker settles; only one exists, so one charge covers all.
    await spend.settle(handle, 900);
    expect(await state()).toEqual({ wallet: 99_100, hold: 0, spent: [900] });
  });

  it("runs the route again on a replay when the host opts in, marking the hold replayed", async () => {
    const app = new Koa();
    app.use(errorHandler());
    const userId = `u_${randomUUID()}`;
    const wallet = await ledger.openWallet({ userId });
    await ledger.grant({ account: wallet.id, amount: 5_000, idempotencyKey: `g:${userId}` });
    app.use(async (ctx, next) => {
      ctx.state.principal = { userId, via: "api_key", scopes: [] };
      await next();
    });
    app.use(spendGuard({ spend, estimate: () => 1_000, replays: "run" }));
    app.use((ctx) => {
      ctx.body = { replayed: ctx.state.spend!.replayed, handle: ctx.state.spend!.handle };
    });
    const local = createServer(app.callback());
    await new Promise<void>((resolve) => local.listen(0, "127.0.0.1", resolve));
    try {
      const url = `http://127.0.0.1:${(local.address() as AddressInfo).port}/`;
      const post = async () => (await fetch(url, { method: "POST", headers: { "idempotency-key": "k" } })).json() as Promise<{ replayed: boolean; handle: string }>;
      const a = await post();
      const b = await post();
      expect([a.replayed, b.replayed, b.handle]).toEqual([false, true, a.handle]);
      expect((await ledger.getAccount(wallet.id)).balance).toBe(4_000);
    } finally {
      await new Promise((resolve) => local.close(resolve));
    }
  });

  it("answers 400 to an estimate that is not a positive whole number, and holds nothing", async () => {
    const { call, state } = await funded(2_000);
    for (const estimate of ["junk", "-5", "0", "1.5", "NaN", "1e300"]) {
      const res = await call(`?estimate=${estimate}`);
      expect(res.status, estimate).toBe(400);
      expect(res.body.error.code).toBe("invalid_estimate");
    }
    expect(await state()).toEqual({ wallet: 2_000, hold: 0, spent: [] });
  });

  it("validates its options when created", () => {
    expect(() => spendGuard({ spend, estimate: 5 as never })).toThrow(ConfigError);
    expect(() => spendGuard({ spend: {} as never, estimate: () => 1 })).toThrow(ConfigError);
    expect(() => spendGuard({ spend, estimate: () => 1, ttlMs: -1 })).toThrow(ConfigError);
    expect(() => spendGuard({ spend, estimate: () => 1, scopes: [] as never })).toThrow(ConfigError);
    expect(() => spendGuard({ spend, estimate: () => 1, replays: "sometimes" as never })).toThrow(ConfigError);
  });
});
