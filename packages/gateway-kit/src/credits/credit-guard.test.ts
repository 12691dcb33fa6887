import { randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import Koa from "koa";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import { migrateToLatest } from "../db/migrations.js";
import { errorHandler, HttpError } from "../http-error.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { creditGuard } from "./credit-guard.js";
import { createKyselyLedger } from "./kysely-ledger.js";
import type { Ledger } from "./ledger.js";
import { creditMigrations } from "./migrations.js";

describeEachDatabase("creditGuard", (fixture) => {
  let ledger: Ledger;
  let server: Server;
  let base: string;

  beforeAll(async () => {
    await migrateToLatest(fixture.database.db, [creditMigrations]);
    ledger = createKyselyLedger(fixture.database.db);
    const app = new Koa();
    app.use(errorHandler());
    // The principal as authenticate() would leave it; the test names the user in a header.
    app.use(async (ctx, next) => {
      ctx.state.principal = { userId: ctx.get("x-user"), via: "api_key", scopes: [] };
      await next();
    });
    app.use(creditGuard({ ledger, estimate: (ctx) => (ctx.query.estimate === "junk" ? ("lots" as never) : Number(ctx.query.estimate ?? 1_000)) }));
    app.use(async (ctx) => {
      if (ctx.query.fail) throw new HttpError(503, "queue_full", "Try again");
      ctx.status = 202;
      ctx.body = { reservation: ctx.state.reservation };
    });
    server = createServer(app.callback());
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((resolve) => server?.close(resolve)));

  const call = async (userId: string, query = "", headers: Record<string, string> = {}) => {
    const res = await fetch(`${base}/v1/runs${query}`, { method: "POST", headers: { "x-user": userId, ...headers } });
    return { status: res.status, body: (await res.json()) as any };
  };
  const funded = async (amount: number) => {
    const userId = `u_${randomUUID()}`;
    const wallet = await ledger.openWallet({ userId });
    await ledger.grant({ account: wallet.id, amount, idempotencyKey: `g:${userId}` });
    return { userId, wallet };
  };

  it("holds the estimate and hands the reservation to the route", async () => {
    const { userId, wallet } = await funded(5_000);
    const res = await call(userId, "?estimate=1200");
    expect(res.status).toBe(202);
    expect(res.body.reservation).toMatchObject({ accountId: wallet.id, amount: 1_200, status: "open" });
    expect((await ledger.getAccount(wallet.id)).balance).toBe(3_800);
    expect((await ledger.getReservation(res.body.reservation.id)).status).toBe("open");
  });

  it("refuses with 402 and the available amount when the wallet cannot cover the estimate", async () => {
    const { userId } = await funded(500);
    const res = await call(userId, "?estimate=501");
    expect(res.status).toBe(402);
    expect(res.body.error).toMatchObject({ code: "insufficient_credits", details: { available: 500, requested: 501 } });
  });

  it("releases the hold when the route fails", async () => {
    const { userId, wallet } = await funded(2_000);
    const res = await call(userId, "?estimate=1500&fail=1");
    expect(res.status).toBe(503);
    expect((await ledger.getAccount(wallet.id)).balance).toBe(2_000);
    expect((await ledger.getAccount(`hold:${wallet.id}`)).balance).toBe(0);
  });

  it("reuses the hold of a retried request with the same Idempotency-Key", async () => {
    const { userId, wallet } = await funded(2_000);
    const first = await call(userId, "?estimate=700", { "idempotency-key": "abc" });
    const again = await call(userId, "?estimate=700", { "idempotency-key": "abc" });
    expect(again.body.reservation.id).toBe(first.body.reservation.id);
    expect((await ledger.getAccount(wallet.id)).balance).toBe(1_300);
    await ledger.settle(first.body.reservation.id, 650);
    const late = await call(userId, "?estimate=700", { "idempotency-key": "abc" });
    expect(late.status).toBe(409);
    expect(late.body.error.code).toBe("reservation_closed");
    const different = await call(userId, "?estimate=900", { "idempotency-key": "abc" });
    expect(different.body.error.code).toBe("idempotency_conflict");
  });

  it("never releases a hold another request created: a failing retry with the same Idempotency-Key leaves it to its owner", async () => {
    const { userId, wallet } = await funded(2_000);
    const first = await call(userId, "?estimate=700", { "idempotency-key": "owned" });
    expect(first.status).toBe(202);
    // The attack: retries that reuse the key and make the route fail (a bad body, say), all at once.
    const retries = await Promise.all(Array.from({ length: 20 }, () => call(userId, "?estimate=700&fail=1", { "idempotency-key": "owned" })));
    expect(retries.every((r) => r.status === 503)).toBe(true);
    expect((await ledger.getReservation(first.body.reservation.id)).status).toBe("open");
    expect((await ledger.getAccount(`hold:${wallet.id}`)).balance).toBe(700);
    // The worker can still charge the run.
    expect(await ledger.settle(first.body.reservation.id, 600)).toMatchObject({ status: "settled", charged: 600, released: 100 });
    expect((await ledger.getAccount(wallet.id)).balance).toBe(1_400);
    // The request that did create a hold still releases it when its route fails.
    const own = await call(userId, "?estimate=300&fail=1", { "idempotency-key": "fresh" });
    expect(own.status).toBe(503);
    expect((await ledger.getAccount(wallet.id)).balance).toBe(1_400);
  });

  it("answers 400 to an estimate that is not a positive whole number, and holds nothing", async () => {
    const { userId, wallet } = await funded(2_000);
    for (const estimate of ["junk", "-5", "0", "1.5", "NaN", "1e300"]) {
      const res = await call(userId, `?estimate=${estimate}`);
      expect(res.status, estimate).toBe(400);
      expect(res.body.error.code).toBe("invalid_estimate");
    }
    expect((await ledger.getAccount(wallet.id)).balance).toBe(2_000);
  });

  it("validates its options when created", () => {
    expect(() => creditGuard({ ledger, estimate: 5 as never })).toThrow(ConfigError);
    expect(() => creditGuard({ ledger: {} as never, estimate: () => 1 })).toThrow(ConfigError);
  });
});
