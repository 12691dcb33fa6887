import { readdirSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import Koa from "koa";
import { DummyDriver, Kysely, PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler } from "kysely";
import { describe, expect, it } from "vitest";
import { AUTH_ERROR_CODES, AuthError, ConfigError, GatewayError } from "./errors.js";
import { errorHandler, errorHeaders, errorStatus, errorStatuses, HttpError } from "./http-error.js";
import { MissingDependencyError } from "./optional-dependency.js";
import { ARCHIVE_PROBLEMS } from "./screening/uploads.js";
import * as gateway from "./index.js";

const SRC = new URL(".", import.meta.url).pathname;

function sourceFiles(dir = SRC): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith(".ts") && !entry.name.endsWith(".test.ts") ? [path] : [];
  });
}

async function serve(app: Koa, path: string): Promise<{ status: number; headers: Headers; body: any }> {
  const server = createServer(app.callback()).listen(0, "127.0.0.1");
  await new Promise((resolve) => server.once("listening", resolve));
  try {
    const res = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}${path}`);
    return { status: res.status, headers: res.headers, body: await res.json() };
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
}

describe("error codes and the status table", () => {
  it("has a status for every code the auth module, options checks and optional dependencies throw", () => {
    const codes = [...AUTH_ERROR_CODES, ...ARCHIVE_PROBLEMS, new ConfigError("x").code, new MissingDependencyError("stripe").code];
    const missing = codes.filter((code) => !Object.hasOwn(errorStatuses, code));
    expect(missing).toEqual([]);
  });

  it("has a status for every literal code thrown with a GatewayError subclass anywhere in the sources", () => {
    // Catches a `new AuthError("new_code", …)` (or `new GatewayError(…)`) whose code nobody mapped.
    const thrown = new Set<string>();
    for (const file of sourceFiles()) {
      const text = readFileSync(file, "utf8");
      for (const match of text.matchAll(/new (?:AuthError|GatewayError)\(\s*"([a-z_]+)"/g)) thrown.add(match[1]!);
      // Subclasses pass their code (or a choice of two) as super's first argument.
      if (/extends (?:GatewayError|ConfigError)\b/.test(text)) {
        for (const match of text.matchAll(/super\(\s*((?:\w+ \? )?"[a-z_]+"(?: : "[a-z_]+")?)/g)) {
          for (const literal of match[1]!.matchAll(/"([a-z_]+)"/g)) thrown.add(literal[1]!);
        }
      }
    }
    expect(thrown.size).toBeGreaterThan(20);
    expect([...thrown].filter((code) => !Object.hasOwn(errorStatuses, code))).toEqual([]);
  });

  it("makes every error class a module exports a coded GatewayError", async () => {
    const exported = (Object.values(await import("./index.js")) as unknown[]).filter(
      (value): value is { prototype: object; name: string } => typeof value === "function" && value.prototype instanceof Error,
    );
    // No plain Error or TypeError reaches a host uncoded.
    expect(exported.filter((cls) => cls !== GatewayError && !(cls.prototype instanceof GatewayError)).map((cls) => cls.name)).toEqual([]);
    expect(exported.length).toBeGreaterThan(15);
  });

  it("keeps HTTP out of the auth services: only the router and the middleware know statuses", () => {
    const edge = new Set(["auth-router.ts", "authenticate.ts", "test-app.ts"]);
    const offenders = sourceFiles(join(SRC, "auth"))
      .filter((file) => !edge.has(file.split("/").pop()!))
      .filter((file) => /\bHttpError\b|new TypeError\(/.test(readFileSync(file, "utf8")));
    expect(offenders).toEqual([]);
  });

  it("maps a domain error by its code, with the headers its protocol asks for", () => {
    const expired = new AuthError("token_expired", "Access token expired", { details: { reason: "expired" } });
    expect(expired).not.toBeInstanceOf(HttpError);
    expect(errorStatus(expired)).toBe(401);
    expect(errorHeaders(expired)).toEqual({ "WWW-Authenticate": 'Bearer error="invalid_token", error_description="expired"' });
    const locked = new AuthError("too_many_attempts", "Too many", { retryAfterSeconds: 30 });
    expect(errorStatus(locked)).toBe(429);
    expect(errorHeaders(locked)).toEqual({ "Retry-After": "30" });
    expect(errorStatus(new HttpError(418, "teapot", "short and stout"))).toBe(418);
    expect(errorStatus(new ConfigError("bad"))).toBe(500);
    expect(errorStatus(new Error("boom"))).toBe(500);
  });

  it("renders a host's own codes through errorHandler({ statuses }) and hides unmapped ones as 500", async () => {
    const unexpected: unknown[] = [];
    const build = (statuses?: Record<string, number>) =>
      new Koa()
        .use(errorHandler({ onUnexpected: (e) => unexpected.push(e), ...(statuses ? { statuses } : {}) }))
        .use((ctx) => {
          if (ctx.path === "/run") throw new GatewayError("run_not_found", "No run r_1", { details: { runId: "r_1" } });
          if (ctx.path === "/login") throw new AuthError("invalid_credentials", "Email or password is incorrect");
          throw new ConfigError("secret key is missing");
        });
    const plain = await serve(build(), "/run");
    expect(plain.status).toBe(500);
    expect(plain.body).toEqual({ error: { code: "internal_error", message: "Internal server error" } });
    expect(unexpected).toHaveLength(1);

    const extended = await serve(build({ run_not_found: 404 }), "/run");
    expect(extended.status).toBe(404);
    expect(extended.body).toEqual({ error: { code: "run_not_found", message: "No run r_1", details: { runId: "r_1" } } });
    // The host's table lays over gateway-kit's, it does not replace it.
    expect((await serve(build({ run_not_found: 404 }), "/login")).status).toBe(401);

    const config = await serve(build(), "/config");
    expect(config.status).toBe(500);
    expect(JSON.stringify(config.body)).not.toContain("secret key");
  });

  it("throws the coded ConfigError, outside any request, for every module's bad options", async () => {
    // Each factory is called as a job worker or a start-up script would, with one option wrong.
    // Nothing reaches a database: a kysely instance that never connects is enough.
    const db = {
      db: new Kysely<any>({
        dialect: {
          createAdapter: () => new PostgresAdapter(),
          createDriver: () => new DummyDriver(),
          createIntrospector: (k) => new PostgresIntrospector(k),
          createQueryCompiler: () => new PostgresQueryCompiler(),
        },
      }),
    };
    {
      const store = gateway.createMemoryRateLimitStore();
      const stripe = { checkout: {}, webhooks: {} } as never;
      const factories: Record<string, () => unknown> = {
        "credits: createPriceList": () => gateway.createPriceList({ markupBps: -1 }),
        "spend: createSpend": () => gateway.createSpend({ db: db.db, ledger: gateway.createKyselyLedger(db.db), ttlMs: -1 }),
        "budgets: createKyselyBudgets": () => gateway.createKyselyBudgets(db.db, { thresholds: [0] }),
        "budgets: budgetGuard": () => gateway.budgetGuard({ budgets: {} as never, estimate: () => 1 }),
        "budgets: webhookNotifier": () => gateway.webhookNotifier({ url: "ftp://x", secret: "0123456789abcdef" }),
        "budgets: createCostRouter": () => gateway.createCostRouter({ tiers: [] }),
        "limits: rateLimit": () => gateway.rateLimit({ store, limit: 0, windowMs: 60_000 }),
        "limits: createRunSlots": () => gateway.createRunSlots({ store: gateway.createMemoryRunSlotStore(), limits: { user: 0 } }),
        "limits: quota": () => gateway.quota({ maxUploadBytes: -1 }),
        "limits: createAnomalyDetector": () => gateway.createAnomalyDetector({ alpha: 1 }),
        "screening: screenInstructions": () => gateway.screenInstructions({ rules: [{}] as never }),
        "screening: validate": () => gateway.validate({}),
        "screening: screenUploads": () => gateway.screenUploads({ maxEntries: -1 } as never),
        "screening: redactResponses": () => gateway.redactResponses({ patterns: [{ kind: "x", pattern: /x/ }] }),
        "privacy: gatewayRetentionRules": () => gateway.gatewayRetentionRules({ sessions: 0 }),
        "audit: createAuditLog": () => gateway.createAuditLog(db.db, { now: "yesterday" as never }),
        "audit: auditRequests": () => gateway.auditRequests({} as never),
        "billing: createCreditCheckout": () => gateway.createCreditCheckout({ stripe, db: db.db, ledger: gateway.createKyselyLedger, packs: [], successUrl: "https://a.test", cancelUrl: "https://a.test" }),
        "billing: stripeWebhook": () => gateway.stripeWebhook({ stripe, db: db.db, ledger: gateway.createKyselyLedger, signingSecret: "" }),
        "billing: createStripeClient": () => gateway.createStripeClient({ apiKey: "" }),
        "db: defineMigrations": () => gateway.defineMigrations("Not A Module", {}),
      };
      const outcomes = Object.fromEntries(
        Object.entries(factories).map(([name, make]) => {
          try {
            make();
            return [name, "no error"];
          } catch (error) {
            return [name, error instanceof ConfigError && error.code === "invalid_config" ? "ConfigError" : String(error)];
          }
        }),
      );
      expect(outcomes).toEqual(Object.fromEntries(Object.keys(factories).map((name) => [name, "ConfigError"])));
      await expect(gateway.openDatabase({ schema: "bad schema" })).rejects.toBeInstanceOf(ConfigError);
      await expect(gateway.eraseUserData(db.db, "u_1", [])).rejects.toBeInstanceOf(ConfigError);
    }
  });
});
