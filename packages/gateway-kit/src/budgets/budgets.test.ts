import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import Koa from "koa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import { migrateToLatest } from "../db/migrations.js";
import { errorHandler } from "../http-error.js";
import { describeEachDatabase, separatePools } from "../testing/each-database.js";
import { budgetGuard } from "./budget-guard.js";
import { createKyselyBudgets } from "./kysely-budgets.js";
import { budgetMigrations } from "./migrations.js";
import { combineNotifiers, emailNotifier, verifyBudgetWebhook, webhookNotifier, type EmailMessage } from "./notifiers.js";
import { periodWindow } from "./periods.js";
import { BudgetExceededError, BudgetKeyConflictError, type BudgetAlert, type BudgetScope } from "./types.js";
import { errorStatus } from "../http-error.js";

/** A domain error as the HTTP edge answers it: its fields plus the status from the code table. */
const atEdge = (error: unknown) => ({ ...(error as object), message: (error as Error).message, status: errorStatus(error) });

const team = (): BudgetScope => ({ kind: "team", id: `team-${randomUUID()}` });
const user = (): BudgetScope => ({ kind: "user", id: `user-${randomUUID()}` });

class Clock {
  constructor(public ms = Date.UTC(2026, 10, 25, 12, 0, 0)) {}
  now = () => new Date(this.ms);
}

function collecting() {
  const alerts: BudgetAlert[] = [];
  return { alerts, notifier: { notify: async (a: BudgetAlert) => void alerts.push(a) } };
}

describe("periodWindow", () => {
  it("cuts UTC days and months, and never resets total", () => {
    const at = new Date("2026-12-31T23:59:59.999Z");
    expect(periodWindow("daily", at)).toEqual({ key: "2026-12-31", start: new Date("2026-12-31T00:00:00Z"), end: new Date("2027-01-01T00:00:00Z") });
    expect(periodWindow("monthly", at)).toEqual({ key: "2026-12", start: new Date("2026-12-01T00:00:00Z"), end: new Date("2027-01-01T00:00:00Z") });
    expect(periodWindow("total", at)).toEqual({ key: "total", start: null, end: null });
  });
});

describe("options", () => {
  it("rejects bad options with ConfigErrors", async () => {
    expect(() => createKyselyBudgets({} as never, { thresholds: [0] })).toThrow(ConfigError);
    expect(() => webhookNotifier({ url: "ftp://x", secret: "0123456789abcdef" })).toThrow(ConfigError);
    expect(() => webhookNotifier({ url: "http://x", secret: "short" })).toThrow(ConfigError);
    expect(() => budgetGuard({ budgets: {} as never, estimate: () => 1 })).toThrow(ConfigError);
  });
});

describeEachDatabase("budgets", (fixture) => {
  const clock = new Clock();
  beforeAll(() => migrateToLatest(fixture.database.db, [budgetMigrations]));

  it("refuses a run that would exceed a budget with 402 and the remaining amount, and charges nothing", async () => {
    const budgets = createKyselyBudgets(fixture.database.db, { now: clock.now });
    const t = team();
    const u = user();
    await budgets.setBudget({ scope: t, period: "monthly", limit: 1_000_000 });
    await budgets.setBudget({ scope: u, period: "daily", limit: 300_000 });
    await budgets.record([t, u], 250_000, `run-${randomUUID()}`);

    const ok = await budgets.check([t, u], 50_000);
    expect(ok.map((s) => [s.budget.period, s.spent, s.remaining]).sort()).toEqual([
      ["daily", 250_000, 50_000],
      ["monthly", 250_000, 750_000],
    ]);
    const error = await budgets.check([t, u], 50_001).catch((e) => e);
    expect(error).toBeInstanceOf(BudgetExceededError);
    expect(errorStatus(error)).toBe(402);
    expect(error.code).toBe("budget_exceeded");
    expect(error.details).toMatchObject({ scope: u, period: "daily", limit: 300_000, spent: 250_000, remaining: 50_000, requested: 50_001 });
    expect(error.details.resetsAt).toBe("2026-11-26T00:00:00.000Z");

    const before = await budgets.status([t, u]);
    await expect(budgets.commit([t, u], 60_000, `run-${randomUUID()}`)).rejects.toBeInstanceOf(BudgetExceededError);
    expect(await budgets.status([t, u])).toEqual(before);
    // A scope without a budget never refuses.
    await expect(budgets.check([user()], 10 ** 12)).resolves.toEqual([]);
  });

  it("records idempotently: a repeated key charges once, a reused key with other values is a 409", async () => {
    const budgets = createKyselyBudgets(fixture.database.db, { now: clock.now });
    const t = team();
    await budgets.setBudget({ scope: t, period: "total", limit: 100 });
    const key = `run-${randomUUID()}`;
    const first = await budgets.record([t], 70, key);
    const again = await budgets.record([t], 70, key);
    expect(first.replayed).toBe(false);
    expect(again.replayed).toBe(true);
    expect(again.statuses[0]!.spent).toBe(70);
    const conflict = await budgets.record([t], 71, key).catch((e) => e);
    expect(conflict).toBeInstanceOf(BudgetKeyConflictError);
    expect(errorStatus(conflict)).toBe(409);
    // `record` takes what a finished run cost, even past the limit; `commit` refuses.
    await budgets.record([t], 50, `run-${randomUUID()}`);
    expect((await budgets.status([t]))[0]).toMatchObject({ spent: 120, remaining: 0 });
    expect(atEdge(await (budgets.commit([t], 1, `run-${randomUUID()}`)).catch((e: unknown) => e))).toMatchObject({ status: 402 });
  });

  it("starts each daily and monthly period afresh and keeps totals", async () => {
    const local = new Clock(Date.UTC(2026, 10, 30, 23, 0, 0));
    const budgets = createKyselyBudgets(fixture.database.db, { now: local.now });
    const u = user();
    await budgets.setBudget({ scope: u, period: "daily", limit: 100 });
    await budgets.setBudget({ scope: u, period: "monthly", limit: 1000 });
    await budgets.setBudget({ scope: u, period: "total", limit: 10_000 });
    await budgets.commit([u], 100, randomUUID());
    await expect(budgets.check([u], 1)).rejects.toMatchObject({ details: { period: "daily" } });
    local.ms += 2 * 3600_000; // 1 December, 01:00
    const statuses = await budgets.check([u], 100);
    expect(Object.fromEntries(statuses.map((s) => [s.budget.period, s.spent]))).toEqual({ daily: 0, monthly: 0, total: 100 });
  });

  it("fires each threshold once per period, configurable per budget", async () => {
    const { alerts, notifier } = collecting();
    const budgets = createKyselyBudgets(fixture.database.db, { now: clock.now, notifier });
    const t = team();
    const other = team();
    await budgets.setBudget({ scope: t, period: "daily", limit: 1000 });
    await budgets.setBudget({ scope: other, period: "daily", limit: 1000, thresholds: [90, 25] });
    expect((await budgets.listBudgets([other]))[0]!.thresholds).toEqual([25, 90]);

    await budgets.record([t], 499, randomUUID());
    expect(alerts).toHaveLength(0);
    const r1 = await budgets.record([t], 1, randomUUID()); // exactly 50 %
    expect(r1.alerts.map((a) => a.threshold)).toEqual([50]);
    await budgets.record([t], 100, randomUUID());
    expect(alerts.map((a) => a.threshold)).toEqual([50]);
    await budgets.record([t], 1000, randomUUID()); // jumps past 80 and 100 at once
    expect(alerts.map((a) => a.threshold)).toEqual([50, 80, 100]);
    await budgets.record([t], 10, randomUUID());
    expect(alerts).toHaveLength(3);
    expect(alerts[2]).toMatchObject({ id: `${alerts[2]!.budget.id}:2026-11-25:100`, spent: 1600, limit: 1000, periodKey: "2026-11-25" });

    await budgets.record([other], 300, randomUUID());
    expect(alerts.at(-1)!.threshold).toBe(25);

    clock.ms += 24 * 3600_000;
    await budgets.record([t], 600, randomUUID());
    expect(alerts.slice(4).map((a) => [a.threshold, a.periodKey])).toEqual([[50, "2026-11-26"]]);
  });

  it("keeps an alert whose delivery failed and delivers it later, once", async () => {
    let failing = true;
    const delivered: BudgetAlert[] = [];
    const errors: unknown[] = [];
    const budgets = createKyselyBudgets(fixture.database.db, {
      now: clock.now,
      notifier: {
        notify: async (a) => {
          if (failing) throw new Error("mail server down");
          delivered.push(a);
        },
      },
      onNotifyError: (e) => errors.push(e),
    });
    const t = team();
    const budget = await budgets.setBudget({ scope: t, period: "total", limit: 10 });
    const result = await budgets.record([t], 10, randomUUID());
    expect(result.alerts.map((a) => a.threshold)).toEqual([50, 80, 100]);
    expect(errors).toHaveLength(3);
    const pending = await fixture.database.db.selectFrom("budget_alerts").selectAll().where("budget_id", "=", budget.id).execute();
    expect(pending.map((p) => [p.delivered_at, p.attempts, p.last_error])).toEqual(Array(3).fill([null, 1, "mail server down"]));

    failing = false;
    // Fresh alerts are left to the charge that fired them (older ones of other tests may go now).
    await budgets.deliverPendingAlerts();
    expect(delivered.filter((a) => a.budget.id === budget.id)).toEqual([]);
    clock.ms += 60_000;
    expect(await budgets.deliverPendingAlerts()).toBeGreaterThanOrEqual(3);
    expect(delivered.filter((a) => a.budget.id === budget.id).map((a) => a.threshold)).toEqual([50, 80, 100]);
    expect(await budgets.deliverPendingAlerts()).toBe(0);
  });

  it("rolls back a charge that fails half-way (unknown scopes, bad amounts are TypeErrors)", async () => {
    const budgets = createKyselyBudgets(fixture.database.db, { now: clock.now });
    const a = team();
    const b = team();
    await budgets.setBudget({ scope: a, period: "total", limit: 100 });
    await budgets.setBudget({ scope: b, period: "total", limit: 10 });
    // Whichever budget is updated first, the refusal of the other undoes it.
    await expect(budgets.commit([a, b], 50, randomUUID())).rejects.toBeInstanceOf(BudgetExceededError);
    expect((await budgets.status([a, b])).map((s) => s.spent)).toEqual([0, 0]);
    const invalid = { status: 400, code: "invalid_request", name: "BudgetInputError" };
    expect(atEdge(await (budgets.record([a], 1.5, randomUUID())).catch((e: unknown) => e))).toMatchObject(invalid);
    expect(atEdge(await (budgets.record([a], -1, randomUUID())).catch((e: unknown) => e))).toMatchObject(invalid);
    expect(atEdge(await (budgets.record([{ kind: "org" as never, id: "x" }], 1, randomUUID())).catch((e: unknown) => e))).toMatchObject(invalid);
    expect(atEdge(await (budgets.setBudget({ scope: a, period: "weekly" as never, limit: 1 })).catch((e: unknown) => e))).toMatchObject(invalid);
    // A NUL byte (e.g. a project id from the path) is refused before PostgreSQL sees it.
    expect(atEdge(await (budgets.record([{ kind: "project", id: "p\u0000x" }], 1, randomUUID())).catch((e: unknown) => e))).toMatchObject(invalid);
    expect(atEdge(await (budgets.record([a], 1, "k\u0000")).catch((e: unknown) => e))).toMatchObject(invalid);
    expect((await budgets.status([a]))[0]!.spent).toBe(0);
  });

  it("reserves an estimate atomically and settles it to the actual cost in the period it was made in", async () => {
    const { alerts, notifier } = collecting();
    const local = new Clock(Date.UTC(2026, 10, 25, 23, 59, 0));
    const budgets = createKyselyBudgets(fixture.database.db, { now: local.now, notifier });
    const u = user();
    await budgets.setBudget({ scope: u, period: "daily", limit: 1000 });
    const a = `res-${randomUUID()}`;
    const b = `res-${randomUUID()}`;
    await budgets.reserve([u], 600, a);
    expect(atEdge(await (budgets.reserve([u], 500, b)).catch((e: unknown) => e))).toMatchObject({ status: 402, details: { remaining: 400 } });
    await budgets.reserve([u], 400, b);
    expect(alerts.map((x) => x.threshold)).toEqual([50, 80, 100]);

    // The run of `a` cost less: the rest comes back to the same day, even after midnight.
    local.ms += 5 * 60_000;
    const settled = await budgets.settle(a, 250);
    expect(settled).toMatchObject({ replayed: false, reserved: 600, settled: 250 });
    expect(settled.statuses[0]).toMatchObject({ periodKey: "2026-11-25", spent: 650 });
    expect((await budgets.status([u]))[0]).toMatchObject({ periodKey: "2026-11-26", spent: 0 });
    expect(await budgets.settle(a, 250)).toMatchObject({ replayed: true });
    await expect(budgets.settle(a, 251)).rejects.toBeInstanceOf(BudgetKeyConflictError);
    // The run of `b` cost more than reserved: recorded past the limit (the work is done), no alert twice.
    expect((await budgets.settle(b, 900)).statuses[0]!.spent).toBe(1150);
    expect(alerts).toHaveLength(3);

    expect(atEdge(await (budgets.settle(`res-${randomUUID()}`, 1)).catch((e: unknown) => e))).toMatchObject({ status: 404, code: "budget_reservation_not_found" });
    const recorded = `rec-${randomUUID()}`;
    await budgets.record([u], 1, recorded);
    expect(atEdge(await (budgets.settle(recorded, 1)).catch((e: unknown) => e))).toMatchObject({ status: 404 });
    await expect(budgets.reserve([u], 1, recorded)).rejects.toBeInstanceOf(BudgetKeyConflictError);
  });

  it("releases reservations whose runs never settled", async () => {
    const local = new Clock();
    const budgets = createKyselyBudgets(fixture.database.db, { now: local.now });
    const t = team();
    await budgets.setBudget({ scope: t, period: "total", limit: 100 });
    const stale = `res-${randomUUID()}`;
    await budgets.reserve([t], 70, stale);
    local.ms += 3600_000;
    await budgets.reserve([t], 30, `res-${randomUUID()}`);
    await expect(budgets.reserve([t], 1, `res-${randomUUID()}`)).rejects.toBeInstanceOf(BudgetExceededError);
    expect(await budgets.releaseStaleReservations(new Date(local.ms - 30 * 60_000))).toBeGreaterThanOrEqual(1);
    expect((await budgets.status([t]))[0]!.spent).toBe(30);
    expect(await budgets.settle(stale, 0)).toMatchObject({ replayed: true, settled: 0 });

    // Forgetting old idempotency records keeps open reservations.
    const open = `res-${randomUUID()}`;
    await budgets.setBudget({ scope: t, period: "total", limit: 200 });
    await budgets.reserve([t], 10, open);
    local.ms += 3600_000;
    expect(await budgets.forgetCharges(new Date(local.ms))).toBeGreaterThanOrEqual(2);
    const left = await fixture.database.db.selectFrom("budget_charges").select("idempotency_key").where("idempotency_key", "in", [stale, open]).execute();
    expect(left.map((r) => r.idempotency_key)).toEqual([open]);
    expect((await budgets.settle(open, 10)).replayed).toBe(false);
  });

  it("posts a signed webhook to a real HTTP endpoint once per threshold, end to end", async () => {
    const secret = "whsec-e2e-0123456789";
    const posts: Array<{ body: string; signature: string }> = [];
    const receiver = createServer((req, res) => {
      let body = "";
      req.setEncoding("utf8");
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        posts.push({ body, signature: String(req.headers["keen-signature"]) });
        res.statusCode = 200;
        res.end("ok");
      });
    });
    await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/budget-alerts`;
    try {
      const budgets = createKyselyBudgets(fixture.database.db, { now: clock.now, notifier: webhookNotifier({ url, secret }) });
      const p = { kind: "project" as const, id: `proj-${randomUUID()}` };
      const budget = await budgets.setBudget({ scope: p, period: "monthly", limit: 1_000_000 });
      await budgets.record([p], 600_000, randomUUID());
      await budgets.record([p], 100_000, randomUUID());
      await budgets.record([p], 100_000, randomUUID());
      expect(posts.map((x) => JSON.parse(x.body).threshold)).toEqual([50, 80]);
      for (const post of posts) expect(verifyBudgetWebhook({ body: post.body, header: post.signature, secret })).toBe(true);
      const delivered = await fixture.database.db.selectFrom("budget_alerts").select(["threshold", "delivered_at"]).where("budget_id", "=", budget.id).orderBy("threshold").execute();
      expect(delivered.map((d) => [d.threshold, d.delivered_at !== null])).toEqual([
        [50, true],
        [80, true],
      ]);
    } finally {
      await new Promise((r) => receiver.close(r));
    }
  });

  it("answers 402 through the middleware and hands the remaining budget to the route", async () => {
    const budgets = createKyselyBudgets(fixture.database.db, { now: clock.now });
    const t = team();
    const userId = `user-${randomUUID()}`;
    await budgets.setBudget({ scope: t, period: "monthly", limit: 5000 });
    await budgets.record([t], 4000, randomUUID());
    const app = new Koa();
    app.use(errorHandler());
    app.use(async (ctx, next) => {
      ctx.state.principal = { userId, teamId: t.id, via: "jwt", scopes: [] };
      await next();
    });
    app.use(budgetGuard({ budgets, estimate: (ctx) => Number(ctx.query.estimate) }));
    app.use((ctx) => {
      ctx.body = { remaining: ctx.state.budget?.remaining, scopes: ctx.state.budget?.scopes };
    });
    const server = createServer(app.callback());
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const ok = await fetch(`${base}/?estimate=1000`);
      expect(ok.status).toBe(200);
      expect(await ok.json()).toEqual({ remaining: 1000, scopes: [{ kind: "user", id: userId }, t] });
      const refused = await fetch(`${base}/?estimate=1001`);
      expect(refused.status).toBe(402);
      const body = (await refused.json()) as any;
      expect(body.error.code).toBe("budget_exceeded");
      expect(body.error.details).toMatchObject({ remaining: 1000, requested: 1001, limit: 5000, period: "monthly" });
      expect(body.error.message).toContain("1000 micro-credits left");
      // Junk estimates are the client's error: 400, never a 500.
      for (const estimate of ["junk", "-1", "1.5", "1e400"]) {
        const bad = await fetch(`${base}/?estimate=${estimate}`);
        expect(bad.status, estimate).toBe(400);
        expect(((await bad.json()) as any).error.code).toBe("invalid_estimate");
      }
    } finally {
      await new Promise((r) => server.close(r));
    }
  });

  if (fixture.kind === "postgres") {
    describe("under concurrency, over separate connection pools", () => {
      const pools = separatePools(fixture, 2, { maxConnections: 10 });

      it("admits concurrent commits only up to the limit", async () => {
        const services = pools.map((p) => createKyselyBudgets(p.db, { now: clock.now }));
        const t = team();
        await services[0]!.setBudget({ scope: t, period: "monthly", limit: 500 });
        const results = await Promise.allSettled(
          Array.from({ length: 120 }, (_, i) => services[i % 2]!.commit([t], 10, `c-${i}-${randomUUID()}`)),
        );
        const admitted = results.filter((r) => r.status === "fulfilled").length;
        const refused = results.filter((r) => r.status === "rejected");
        expect(admitted).toBe(50);
        expect(refused.every((r) => (r as PromiseRejectedResult).reason instanceof BudgetExceededError)).toBe(true);
        expect((await services[0]!.status([t]))[0]!.spent).toBe(500);
        const charges = await fixture.database.db.selectFrom("budget_charges").select("idempotency_key").where("idempotency_key", "like", "c-%").execute();
        expect(charges).toHaveLength(50);
      });

      it("never overspends with concurrent reservations, and settling frees what was not used", async () => {
        const services = pools.map((p) => createKyselyBudgets(p.db, { now: clock.now }));
        const t = team();
        await services[0]!.setBudget({ scope: t, period: "daily", limit: 300 });
        const keys = Array.from({ length: 100 }, () => `r-${randomUUID()}`);
        const results = await Promise.allSettled(keys.map((key, i) => services[i % 2]!.reserve([t], 10, key)));
        const admitted = keys.filter((_, i) => results[i]!.status === "fulfilled");
        expect(admitted).toHaveLength(30);
        await Promise.all(admitted.map((key, i) => services[i % 2]!.settle(key, 4)));
        expect((await services[1]!.status([t]))[0]!.spent).toBe(120);
        const more = await Promise.allSettled(Array.from({ length: 40 }, (_, i) => services[i % 2]!.reserve([t], 10, `r-${randomUUID()}`)));
        expect(more.filter((r) => r.status === "fulfilled")).toHaveLength(18);
      });

      it("fires a threshold once when many processes cross it together", async () => {
        const sinks = pools.map(() => collecting());
        const services = pools.map((p, i) => createKyselyBudgets(p.db, { now: clock.now, notifier: sinks[i]!.notifier }));
        const t = team();
        await services[0]!.setBudget({ scope: t, period: "daily", limit: 100 });
        await Promise.all(Array.from({ length: 40 }, (_, i) => services[i % 2]!.record([t], 5, randomUUID())));
        const fired = sinks.flatMap((s) => s.alerts).map((a) => a.threshold).sort((a, b) => a - b);
        expect(fired).toEqual([50, 80, 100]);
      });

      it("charges a key once when the same key races on two processes", async () => {
        const services = pools.map((p) => createKyselyBudgets(p.db, { now: clock.now }));
        const t = team();
        await services[0]!.setBudget({ scope: t, period: "total", limit: 1000 });
        const key = randomUUID();
        const results = await Promise.all(Array.from({ length: 10 }, (_, i) => services[i % 2]!.record([t], 7, key)));
        expect(results.filter((r) => !r.replayed)).toHaveLength(1);
        expect((await services[1]!.status([t]))[0]!.spent).toBe(7);
      });
    });
  }
});

describe("notifiers", () => {
  const alert: BudgetAlert = {
    id: "b1:2026-11:80",
    budget: { id: "b1", scope: { kind: "team", id: "t1" }, period: "monthly", limit: 2_000_000, thresholds: [50, 80, 100], createdAt: new Date(), updatedAt: new Date() },
    periodKey: "2026-11",
    threshold: 80,
    spent: 1_600_000,
    limit: 2_000_000,
    firedAt: new Date("2026-11-25T12:00:00Z"),
  };
  const secret = "whsec-test-0123456789";
  let server: Server;
  let url: string;
  const received: Array<{ headers: IncomingMessage["headers"]; body: string }> = [];
  let answer = 204;
  beforeAll(async () => {
    server = createServer((req, res) => {
      let body = "";
      req.setEncoding("utf8");
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        received.push({ headers: req.headers, body });
        res.statusCode = answer;
        res.end();
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/budget`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it("POSTs a signed JSON alert that the receiver can verify, and nothing forged verifies", async () => {
    const now = () => new Date("2026-11-25T12:00:05Z");
    await webhookNotifier({ url, secret, now }).notify(alert);
    const { headers, body } = received.at(-1)!;
    expect(headers["content-type"]).toBe("application/json");
    expect(headers["keen-webhook-id"]).toBe("b1:2026-11:80");
    expect(JSON.parse(body)).toEqual({
      type: "budget.threshold_reached",
      id: "b1:2026-11:80",
      scope: { kind: "team", id: "t1" },
      period: "monthly",
      periodKey: "2026-11",
      threshold: 80,
      spent: 1_600_000,
      limit: 2_000_000,
      firedAt: "2026-11-25T12:00:00.000Z",
    });
    const header = headers["keen-signature"] as string;
    expect(header).toMatch(/^t=\d+,v1=[0-9a-f]{64}$/);
    expect(verifyBudgetWebhook({ body, header, secret, now: now() })).toBe(true);
    expect(verifyBudgetWebhook({ body: body.replace("80", "81"), header, secret, now: now() })).toBe(false);
    expect(verifyBudgetWebhook({ body, header, secret: "another-secret-0000", now: now() })).toBe(false);
    expect(verifyBudgetWebhook({ body, header, secret, now: new Date("2026-11-25T12:10:00Z") })).toBe(false);
    expect(verifyBudgetWebhook({ body, header: undefined, secret })).toBe(false);
  });

  it("throws on a non-2xx answer or an unreachable URL, so the alert stays pending", async () => {
    answer = 500;
    // `status` here is the webhook's own answer; the error's code is what the edge maps.
    await expect(webhookNotifier({ url, secret }).notify(alert)).rejects.toMatchObject({ name: "BudgetWebhookError", code: "budget_webhook_failed", status: 500 });
    answer = 204;
    await expect(webhookNotifier({ url: "http://127.0.0.1:1/", secret, timeoutMs: 2000 }).notify(alert)).rejects.toThrow(/unreachable/);
  });

  it("emails the chosen recipients and sends to every combined notifier", async () => {
    const sent: EmailMessage[] = [];
    const email = emailNotifier({ sender: { send: async (m) => void sent.push(m) }, recipients: (a) => (a.threshold >= 80 ? ["owner@example.com"] : []) });
    await combineNotifiers(email, webhookNotifier({ url, secret })).notify(alert);
    expect(sent).toEqual([
      {
        to: ["owner@example.com"],
        subject: "Budget alert: team t1 passed 80% of its monthly budget",
        text: expect.stringContaining("Spent: 1.6 credits of 2.\n"),
      },
    ]);
    expect(received.at(-1)!.headers["keen-webhook-id"]).toBe(alert.id);
    await email.notify({ ...alert, threshold: 50 });
    expect(sent).toHaveLength(1);
  });
});
