// Test support (not exported): a real Koa app with the auth router and a few protected routes,
// listening on an ephemeral loopback port, driven with fetch.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import Koa from "koa";
import { Router } from "@koa/router";
import { sql } from "kysely";
import type { AuditEventInput, AuditSink } from "../audit/index.js";
import { defineMigrations, migrateToLatest } from "../db/index.js";
import { errorHandler } from "../http-error.js";
import { TestClock, type DatabaseFixture } from "../testing/index.js";
import { authRouter } from "./auth-router.js";
import { createAuthService, type AuthService, type AuthServiceOptions } from "./auth-service.js";
import { authenticate, loadInTenant, requirePermission, requireScope } from "./authenticate.js";
import { JwtKeySet } from "./jwt.js";
import { createKyselyAuthStores } from "./kysely-stores.js";
import { authMigrations } from "./migrations.js";
import type { SmsSender } from "./sms.js";

export interface TestResponse {
  status: number;
  headers: Headers;
  body: any;
}

export interface TestApp {
  url: string;
  service: AuthService;
  keys: JwtKeySet;
  clock: TestClock;
  auditEvents: AuditEventInput[];
  smsMessages: Array<{ phone: string; message: string }>;
  request(method: string, path: string, options?: { body?: unknown; rawBody?: string; token?: string; headers?: Record<string, string> }): Promise<TestResponse>;
  close(): Promise<void>;
}

/** Migrations plus the demo `projects` table the tenant tests read. */
export async function migrateForTests(fixture: DatabaseFixture): Promise<void> {
  await migrateToLatest(fixture.database.db, [
    authMigrations,
    defineMigrations("zz_test", {
      zz_test_0001_projects: {
        up: async (db) => {
          await db.schema
            .createTable("projects")
            .addColumn("id", "text", (c) => c.primaryKey())
            .addColumn("team_id", "text", (c) => c.notNull())
            .addColumn("name", "text", (c) => c.notNull())
            .execute();
        },
      },
    }),
  ]);
}

export async function startTestApp(fixture: DatabaseFixture, overrides: Partial<AuthServiceOptions> = {}): Promise<TestApp> {
  const clock = new TestClock();
  const auditEvents: AuditEventInput[] = [];
  const smsMessages: Array<{ phone: string; message: string }> = [];
  const audit: AuditSink = { record: async (event) => void auditEvents.push(event) };
  const sms: SmsSender = { send: async (phone, message) => void smsMessages.push({ phone, message }) };
  const keys = await JwtKeySet.generate({ algorithm: "EdDSA", now: clock.now });
  const service = createAuthService({
    stores: createKyselyAuthStores(fixture.database.db),
    keys,
    issuer: "https://keen.test",
    audience: "keen-api",
    passwordHashing: { memoryCost: 1024, timeCost: 1 },
    audit,
    sms,
    now: clock.now,
    webauthn: { rpID: "localhost", rpName: "keen test", origins: ["http://localhost:5173"] },
    ...overrides,
  });
  const app = new Koa();
  app.proxy = true; // lets tests pick the client IP with X-Forwarded-For
  app.use(errorHandler());
  const auth = authRouter({ service });
  app.use(auth.routes()).use(auth.allowedMethods());

  const api = new Router({ prefix: "/v1" });
  api.use(authenticate({ service }));
  api.get("/sessions", requireScope("sessions:read"), (ctx) => {
    ctx.body = { principal: ctx.state.principal };
  });
  api.post("/sessions", requireScope("sessions:write"), (ctx) => {
    ctx.status = 201;
    ctx.body = { created: true };
  });
  api.get("/billing", requirePermission("billing:manage"), (ctx) => {
    ctx.body = { billing: true };
  });
  api.get("/audit", requirePermission("audit:read"), (ctx) => {
    ctx.body = { audit: true };
  });
  api.get("/projects/:id", async (ctx) => {
    const db = fixture.database.db;
    ctx.body = await loadInTenant(
      ctx.state.principal,
      (teamId) =>
        db.selectFrom("projects").selectAll().where("id", "=", ctx.params.id!).where("team_id", "=", teamId).executeTakeFirst(),
      "Project",
    );
  });
  app.use(api.routes()).use(api.allowedMethods());

  const server: Server = createServer(app.callback());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  return {
    url,
    service,
    keys,
    clock,
    auditEvents,
    smsMessages,
    async request(method, path, options = {}) {
      const headers: Record<string, string> = { ...options.headers };
      if (options.token) headers.authorization = `Bearer ${options.token}`;
      let body: string | undefined;
      if (options.rawBody !== undefined) body = options.rawBody;
      else if (options.body !== undefined) {
        body = JSON.stringify(options.body);
        headers["content-type"] ??= "application/json";
      }
      const response = await fetch(url + path, { method, headers, body, redirect: "manual" });
      const text = await response.text();
      let parsed: unknown = text;
      try {
        parsed = text ? JSON.parse(text) : undefined;
      } catch {
        // keep the raw text
      }
      return { status: response.status, headers: response.headers, body: parsed };
    },
    close: () => new Promise<void>((resolve, reject) => server.close((e) => (e ? reject(e) : resolve()))),
  };
}

let counter = 0;
/** A unique email per call, so tests sharing a database never collide. */
export function uniqueEmail(tag = "user"): string {
  counter += 1;
  return `${tag}-${counter}-${Math.random().toString(36).slice(2, 8)}@example.com`;
}

export const PASSWORD = "correct horse battery";

/** Signs a user up through the API and returns the token pair plus ids. */
export async function signup(app: TestApp, email = uniqueEmail()) {
  const res = await app.request("POST", "/auth/signup", { body: { email, password: PASSWORD } });
  if (res.status !== 201) throw new Error(`signup failed: ${res.status} ${JSON.stringify(res.body)}`);
  return { email, ...(res.body as { user: { id: string }; accessToken: string; refreshToken: string; sessionId: string; teamId: string }) };
}

/** Adds `userId` to `teamId` with a role, directly through the store. */
export async function addMember(app: TestApp, teamId: string, userId: string, role: "owner" | "admin" | "member" | "viewer") {
  await app.service.stores.teams.addMember(teamId, userId, role, app.clock.now());
}

export { sql };

/** Enrols and confirms a TOTP factor through the API. */
export async function enrolTotpFactor(app: TestApp, token: string) {
  const { totpCode } = await import("./totp.js");
  const enrol = await app.request("POST", "/auth/mfa/totp", { token, body: { password: PASSWORD } });
  if (enrol.status !== 201) throw new Error(`totp enrol failed: ${enrol.status}`);
  const confirm = await app.request("POST", "/auth/mfa/totp/verify", { token, body: { factorId: enrol.body.factorId, code: totpCode(enrol.body.secret, app.clock.now()) } });
  if (confirm.status !== 200) throw new Error(`totp confirm failed: ${confirm.status}`);
  return { factorId: enrol.body.factorId as string, secret: enrol.body.secret as string, recoveryCodes: confirm.body.recoveryCodes as string[] };
}

/** The six-digit code of the last text sent to `phone`. */
export function lastSmsCode(app: TestApp, phone: string): string {
  const message = app.smsMessages.filter((m) => m.phone === phone).at(-1);
  if (!message) throw new Error(`no text sent to ${phone}`);
  return /(\d{6})/.exec(message.message)![1]!;
}

/** Enrols and confirms an SMS factor through the API. */
export async function enrolSmsFactor(app: TestApp, token: string, phone: string) {
  const enrol = await app.request("POST", "/auth/mfa/sms", { token, body: { phone, password: PASSWORD } });
  if (enrol.status !== 201) throw new Error(`sms enrol failed: ${enrol.status} ${JSON.stringify(enrol.body)}`);
  const confirm = await app.request("POST", "/auth/mfa/sms/verify", { token, body: { factorId: enrol.body.factorId, code: lastSmsCode(app, phone) } });
  if (confirm.status !== 200) throw new Error(`sms confirm failed: ${confirm.status}`);
  return { factorId: enrol.body.factorId as string };
}
