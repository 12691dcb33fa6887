import { randomUUID } from "node:crypto";
import { bodyParser } from "@koa/bodyparser";
import { Router } from "@koa/router";
import Koa from "koa";
import {
  authenticate,
  authMigrations,
  authRouter,
  createAuthService,
  createKyselyAuthStores,
  errorHandler,
  HttpError,
  JwtKeySet,
  loadInTenant,
  defineMigrations,
  migrateToLatest,
  requirePermission,
  requireScope,
  type Database,
  type PasswordHashingOptions,
} from "@keen/gateway-kit";

/** The app's own table: agent runs, each owned by a team. */
const runMigrations = defineMigrations("app", {
  app_0001_runs: {
    up: async (db) => {
      await db.schema
        .createTable("runs")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("team_id", "text", (c) => c.notNull())
        .addColumn("vision", "text", (c) => c.notNull())
        .addColumn("created_by", "text", (c) => c.notNull())
        .execute();
    },
  },
});

export interface AppOptions {
  database: Database;
  /** Signing keys; generate once and persist them in production (see `JwtKeySet.fromJwks`). */
  keys?: JwtKeySet;
  /** Lower argon2 cost for tests only. */
  passwordHashing?: PasswordHashingOptions;
}

/** Builds the app: its existing routes, plus gateway-kit auth mounted beside them. */
export async function createApp(options: AppOptions): Promise<Koa> {
  const { db } = options.database;
  // 1. Run gateway-kit's migrations with the app's own.
  await migrateToLatest(db, [authMigrations, runMigrations]);

  // 2. One auth service over kysely stores.
  const auth = createAuthService({
    stores: createKyselyAuthStores(db),
    keys: options.keys ?? (await JwtKeySet.generate({ algorithm: "EdDSA" })),
    issuer: "https://runs.example",
    audience: "runs-api",
    ...(options.passwordHashing ? { passwordHashing: options.passwordHashing } : {}),
  });

  const app = new Koa();
  // 3. One error shape for everything below: { error: { code, message } }.
  app.use(errorHandler({ onUnexpected: (error) => console.error(error) }));

  // The routes the app already had stay as they were.
  const existing = new Router();
  existing.get("/health", (ctx) => {
    ctx.body = { ok: true };
  });
  app.use(existing.routes());

  // 4. Sign-up, login, refresh, API keys, MFA … under /auth.
  const authRoutes = authRouter({ service: auth, prefix: "/auth" });
  app.use(authRoutes.routes()).use(authRoutes.allowedMethods());

  // 5. The API: every request authenticated (JWT or API key), then checked per route.
  const api = new Router({ prefix: "/api" });
  api.use(bodyParser());
  api.use(authenticate({ service: auth }));

  api.get("/runs", requireScope("sessions:read"), async (ctx) => {
    const teamId = ctx.state.principal!.teamId!;
    ctx.body = { runs: await db.selectFrom("runs").selectAll().where("team_id", "=", teamId).orderBy("id").execute() };
  });

  api.post("/runs", requireScope("sessions:write"), async (ctx) => {
    const { vision } = (ctx.request.body ?? {}) as { vision?: unknown };
    if (typeof vision !== "string" || vision.length === 0 || vision.length > 2000) {
      throw new HttpError(400, "invalid_request", "vision must be a non-empty string");
    }
    const principal = ctx.state.principal!;
    const run = { id: randomUUID(), team_id: principal.teamId!, vision, created_by: principal.userId };
    await db.insertInto("runs").values(run).execute();
    ctx.status = 201;
    ctx.body = run;
  });

  // Another team's run is a 404, exactly like a run that does not exist.
  api.get("/runs/:id", requireScope("sessions:read"), async (ctx) => {
    ctx.body = await loadInTenant(
      ctx.state.principal,
      (teamId) => db.selectFrom("runs").selectAll().where("id", "=", ctx.params.id!).where("team_id", "=", teamId).executeTakeFirst(),
      "Run",
    );
  });

  api.get("/billing", requirePermission("billing:read"), (ctx) => {
    ctx.body = { teamId: ctx.state.principal!.teamId, plan: "free" };
  });

  app.use(api.routes()).use(api.allowedMethods());
  return app;
}
