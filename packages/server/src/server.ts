import { webcrypto } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { createServer as createHttpServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { Router } from "@koa/router";
import {
  auditRequests,
  authenticate,
  authRouter,
  createAuditLog,
  createAuthService,
  createKyselyAuthStores,
  createKyselyBudgets,
  createKyselyLedger,
  createKyselyRateLimitStore,
  createKyselyRunSlotStore,
  createPriceList,
  createRunSlots,
  createSpend,
  JwtKeySet,
  openDatabase,
  rateLimit,
  validate,
  type AuthService,
  type AuthStores,
  type Database,
  type Ledger,
  type Mailer,
  type PasswordHashingOptions,
  type Spend,
} from "@keen/gateway-kit";
import Koa from "koa";
import type { Kysely } from "kysely";
import { pino, type DestinationStream, type Logger } from "pino";
import * as z from "zod";
import { GrantCreditsBody } from "./admin-input.js";
import { adminCheck } from "./admins.js";
import { PreferencesBody } from "./preferences-input.js";
import { parseConfig, type ServerConfig, type ServerConfigInput } from "./config.js";
import { migrateServer } from "./db/migrations.js";
import type { ServerTables } from "./db/tables.js";
import { SERVER_ERROR_STATUSES, ServerError } from "./errors.js";
import { localEventBus, postgresEventBus, type EventBus } from "./events/event-bus.js";
import { RunEventLog } from "./events/event-log.js";
import { attachWebSocketStreams, type OpenStream, type StreamDeps } from "./events/stream.js";
import { createStreamSlots } from "./events/stream-slots.js";
import { edge } from "./http/edge.js";
import { jsonBody } from "./http/json-body.js";
import { createMetrics } from "./http/metrics.js";
import { openApiDocument } from "./http/openapi.js";
import { inProcessQueue, pgBossQueue, type JobQueue } from "./queue/job-queue.js";
import { mountRunRoutes, RUN_SCOPES } from "./runs/routes.js";
import { createRunService, RUN_QUEUE, type RunService } from "./runs/run-service.js";
import { createRunWorker, type RunWorker } from "./runs/run-worker.js";
import { mountUploadRoutes } from "./uploads/routes.js";
import { mountAuditRoutes } from "./audit/routes.js";
import { billingWebhook, mountBillingRoutes } from "./billing/routes.js";
import { mountBudgetRoutes } from "./budgets/routes.js";
import { outboxMailer } from "./mail/outbox-mailer.js";
import { webhookMailer } from "./mail/webhook-mailer.js";
import { lockLiveUser } from "./privacy/live-user.js";
import { mountPrivacyRoutes } from "./privacy/routes.js";
import { mountTeamRoutes } from "./teams/routes.js";
import { mountWebhookRoutes } from "./webhooks/routes.js";
import { createWebhookService, type WebhookService } from "./webhooks/webhook-service.js";

export interface CreateServerOptions {
  /** Where log lines go (default stdout). */
  logDestination?: DestinationStream;
  /** Lower password-hashing cost, for tests only. */
  passwordHashing?: PasswordHashingOptions;
  /**
   * Sends the server's email (verification links). Default: the webhook mailer when
   * `mailWebhookUrl` is set, otherwise the outbox mailer writing files under `mailOutboxDir`.
   */
  mailer?: Mailer;
}

/** The mailer the config names: a webhook, or the outbox folder (development, self-hosting without SMTP). */
function configuredMailer(config: ServerConfig): Mailer {
  if (config.mailWebhookUrl) return webhookMailer({ url: config.mailWebhookUrl, token: config.mailWebhookToken });
  return outboxMailer({ dir: config.mailOutboxDir });
}

export interface KeenServer {
  readonly config: ServerConfig;
  readonly app: Koa;
  readonly http: Server;
  readonly database: Database;
  readonly auth: AuthService;
  readonly ledger: Ledger;
  /** Runs' holds: team wallet and budgets together, one handle per run attempt. */
  readonly spend: Spend;
  readonly runs: RunService;
  readonly worker: RunWorker;
  readonly webhooks: WebhookService;
  readonly queue: JobQueue;
  /** Where run events are announced (in process, or LISTEN/NOTIFY on PostgreSQL). */
  readonly bus: EventBus;
  readonly logger: Logger;
  /** The authenticated `/v1` router (its routes are the API the OpenAPI document describes). */
  readonly api: Router;
  /** gateway-kit's auth routes under `/v1/auth`, and the unauthenticated `/v1` routes (the Stripe webhook). */
  readonly publicRouters: readonly Router[];
  /** Starts listening on the configured host and port; resolves to the base URL. */
  listen(): Promise<string>;
  /** Stops taking requests and work, checkpoints running runs, ends streams, closes the database. */
  close(): Promise<void>;
}

/**
 * gateway-kit's auth stores, with the credentials a signed-in user adds (API keys, second
 * factors, recovery codes) written only for a live user: the new rows and the user's row lock the
 * erasure takes (`lockLiveUser`) in one transaction, so one added while its owner is being erased
 * is refused (410 `account_erased`) instead of outliving the erasure.
 */
function authStoresFor(db: Kysely<ServerTables>): AuthStores {
  const stores = createKyselyAuthStores(db);
  const forLiveUser = <T>(userId: string, write: (stores: AuthStores) => Promise<T>) =>
    (db as Kysely<any>).transaction().execute(async (trx) => {
      await lockLiveUser(trx, userId);
      return write(createKyselyAuthStores(trx));
    });
  return {
    ...stores,
    apiKeys: {
      ...stores.apiKeys,
      create: (key) => forLiveUser(key.userId, (tx) => tx.apiKeys.create(key)),
    },
    mfa: {
      ...stores.mfa,
      addFactor: (factor, at) => forLiveUser(factor.userId, (tx) => tx.mfa.addFactor(factor, at)),
      replaceRecoveryCodes: (userId, codeHashes, at) => forLiveUser(userId, (tx) => tx.mfa.replaceRecoveryCodes(userId, codeHashes, at)),
    },
  };
}

/** Loads the token-signing key every server process shares, creating it on first start. */
async function signingKeys(db: Kysely<ServerTables>): Promise<JwtKeySet> {
  const read = () => db.selectFrom("server_settings").select("value").where("name", "=", "jwt_signing_key").executeTakeFirst();
  let row = await read();
  if (!row) {
    const fresh = await JwtKeySet.generate({ algorithm: "EdDSA" });
    // WebCrypto adds key_ops/ext, which would stop the public half from importing for verify.
    const { key_ops: _ops, ext: _ext, ...jwk } = await webcrypto.subtle.exportKey("jwk", fresh.signingKey().key as webcrypto.CryptoKey);
    await db
      .insertInto("server_settings")
      .values({ name: "jwt_signing_key", value: JSON.stringify({ ...jwk, kid: fresh.currentKid }) })
      .onConflict((oc) => oc.column("name").doNothing())
      .execute();
    row = await read();
  }
  const signing = (typeof row!.value === "string" ? JSON.parse(row!.value) : row!.value) as Record<string, string>;
  return JwtKeySet.fromJwks({ algorithm: "EdDSA", signing });
}

/**
 * Builds the whole server on one config: database (PGlite under the data dir, or PostgreSQL),
 * migrations, gateway-kit's services, the job queue, the run worker, and the Koa app. Call
 * `listen()` to serve; tests may use `app.callback()` instead.
 *
 * @example
 * const server = await createServer({ port: 0, dataDir: "/tmp/keen", modelBaseUrl: "http://127.0.0.1:9999", modelApiKey: "test" });
 * const url = await server.listen();
 */
export async function createServer(input: ServerConfigInput | ServerConfig, options: CreateServerOptions = {}): Promise<KeenServer> {
  const config = parseConfig(input as ServerConfigInput);
  const logger = pino({ level: config.logLevel, base: { service: "keen-server" } }, options.logDestination);
  await mkdir(config.dataDir, { recursive: true });
  await mkdir(config.workspacesDir, { recursive: true });
  const database = config.databaseUrl
    ? await openDatabase<ServerTables>({ url: config.databaseUrl, ...(config.databaseSchema ? { schema: config.databaseSchema } : {}) })
    : await openDatabase<ServerTables>({ dataDir: join(config.dataDir, "db") });
  const db = database.db as Kysely<ServerTables>;
  const cleanups: Array<() => Promise<void>> = [() => database.close()];
  try {
    await migrateServer(db);
    const audit = createAuditLog(db);
    const auth = createAuthService({
      stores: authStoresFor(db),
      keys: await signingKeys(db),
      issuer: "keen-server",
      audience: "keen-api",
      audit,
      // A password-less account re-authenticates (new factors, erasure) within 10 minutes of signing in.
      reauthMaxAgeSeconds: 600,
      // Proving the account's address: what joining a team by invite, and admin rights, need.
      emailVerification: { mailer: options.mailer ?? configuredMailer(config), ttlSeconds: config.emailVerificationTtlHours * 3600 },
      loginLimiter: { ipv6PrefixLength: config.ipv6LimitPrefix },
      ...(options.passwordHashing ? { passwordHashing: options.passwordHashing } : {}),
    });
    const ledger = createKyselyLedger(db);
    const budgets = createKyselyBudgets(db);
    const spend = createSpend({ db, ledger, budgets });
    const slots = createRunSlots({ store: createKyselyRunSlotStore(db), limits: { user: config.maxRunsPerUser }, leaseMs: Math.max(config.staleAfterMs * 2, 60_000) });
    const priceList = createPriceList();
    const queueKind = config.queue ?? (database.kind === "postgres" ? "pg-boss" : "in-process");
    if (queueKind === "pg-boss" && !config.databaseUrl) throw new ServerError("invalid_request", "the pg-boss queue needs DATABASE_URL");
    const queue =
      queueKind === "pg-boss"
        ? pgBossQueue({ url: config.databaseUrl!, schema: `${config.databaseSchema ?? "keen"}_jobs`, onError: (error) => logger.warn({ err: error }, "job queue error") })
        : inProcessQueue();
    await queue.start();
    cleanups.unshift(() => queue.stop());
    const bus: EventBus =
      database.kind === "postgres"
        ? await postgresEventBus({ url: config.databaseUrl!, ...(config.databaseSchema ? { schema: config.databaseSchema } : {}), onError: (error) => logger.warn({ err: error }, "event bus error") })
        : localEventBus();
    cleanups.unshift(() => bus.close());
    const metrics = createMetrics({ queueDepth: () => queue.depth(RUN_QUEUE) });
    // Listed in adminEmails AND verified: see admins.ts, the one rule for every admin decision.
    const isAdmin = adminCheck(auth.stores.users, config.adminEmails);
    const webhooks = createWebhookService({ db, queue, config, logger });
    const onRunEnded = (runId: string) => webhooks.runEnded(runId);
    const runs = createRunService({ db, config, ledger, spend, slots, queue, bus, priceList, isAdmin, onRunEnded });
    const worker = createRunWorker({ db, config, ledger, spend, slots, queue, bus, priceList, logger, metrics, onRunEnded });
    const eventLog = new RunEventLog(db);
    // One bucket per user for the API: the router's rate limit and WebSocket upgrades draw on it.
    const rateLimits = createKyselyRateLimitStore(db);
    const streams = new Set<OpenStream>();
    const stream: StreamDeps = {
      config,
      log: eventLog,
      bus,
      runs,
      streams,
      slots: createStreamSlots({ perUser: config.maxStreamsPerUser, total: config.maxStreams }),
      auth,
      scopes: RUN_SCOPES,
      admit: async (principal) => {
        // The key rateLimit({ by: "user" }) uses: its name, then the user.
        const result = await rateLimits.consume(`user:user:${principal.userId}`, { limit: config.rateLimit, windowMs: 60_000 }, 1, Date.now());
        return { allowed: result.allowed, retryAfterSeconds: Math.max(1, Math.ceil(result.retryAfterMs / 1000)) };
      },
      onOpen: () => {
        metrics.streamsOpen.inc();
        return () => metrics.streamsOpen.dec();
      },
    };

    let ready = false;
    let stopping = false;
    const app = new Koa({ proxy: false });
    app.silent = true;
    app.use(edge({ logger, metrics }));

    const probes = new Router();
    probes.get("/healthz", (ctx) => {
      ctx.body = { status: "ok" };
    });
    probes.get("/readyz", async (ctx) => {
      if (!ready || stopping) throw new ServerError("unavailable", stopping ? "The server is stopping" : "The server is starting");
      await db.selectFrom("server_settings").select("name").limit(1).execute();
      ctx.body = { status: "ready" };
    });
    probes.get("/metrics", async (ctx) => {
      ctx.type = metrics.registry.contentType;
      ctx.body = await metrics.registry.metrics();
    });
    // Built on the first request that asks for it, not on every start.
    let document: Record<string, unknown> | undefined;
    probes.get("/v1/openapi.json", (ctx) => {
      ctx.body = document ??= openApiDocument();
    });
    app.use(probes.routes());

    // Sign-up, login, tokens, MFA, sessions, API keys: gateway-kit's router, under /v1/auth.
    const authRoutes = authRouter({ service: auth, prefix: "/v1/auth" });
    app.use(authRoutes.routes()).use(authRoutes.allowedMethods());

    // Stripe signs its webhook instead of presenting a token: outside the authenticated router,
    // and before any body parser (the signature covers the raw body).
    const stripeRoutes = new Router({ prefix: "/v1" });
    stripeRoutes.post("/billing/webhook", billingWebhook({ db, config, logger }));
    app.use(stripeRoutes.routes()).use(stripeRoutes.allowedMethods());

    // The API pipeline, in this order for every request: request id (edge) → authenticate →
    // audit (records the outcome of everything below) → rate limit → validate → screen →
    // slot and credit reservation (run create) → handler.
    const api = new Router({ prefix: "/v1" });
    api.use(authenticate({ service: auth }));
    api.use(auditRequests(audit, { statuses: SERVER_ERROR_STATUSES, onError: (error) => logger.warn({ err: error }, "audit write failed") }));
    api.use(rateLimit({ store: rateLimits, limit: config.rateLimit, windowMs: 60_000, by: "user", ipv6PrefixLength: config.ipv6LimitPrefix }));

    api.get("/me", async (ctx) => {
      const principal = ctx.state.principal!;
      const user = await auth.stores.users.findById(principal.userId);
      if (!user) throw new ServerError("not_found", "User not found");
      ctx.body = {
        user: { id: user.id, email: user.email, emailVerified: user.emailVerified, displayName: user.displayName },
        teamId: principal.teamId ?? null,
        via: principal.via,
        scopes: principal.scopes,
        admin: await isAdmin(principal),
      };
    });

    api.get("/me/preferences", async (ctx) => {
      const row = await db.selectFrom("user_preferences").select("keep_workspaces").where("user_id", "=", ctx.state.principal!.userId).executeTakeFirst();
      ctx.body = { keepWorkspaces: row?.keep_workspaces === true };
    });
    api.put("/me/preferences", jsonBody({ limit: 4 * 1024 }), validate({ body: PreferencesBody }), async (ctx) => {
      const { keepWorkspaces } = ctx.state.validated!.body as PreferencesBody;
      const userId = ctx.state.principal!.userId;
      await db.transaction().execute(async (trx) => {
        await lockLiveUser(trx, userId);
        await trx
          .insertInto("user_preferences")
          .values({ user_id: userId, keep_workspaces: keepWorkspaces })
          .onConflict((oc) => oc.column("user_id").doUpdateSet({ keep_workspaces: keepWorkspaces }))
          .execute();
      });
      ctx.body = { keepWorkspaces };
    });

    api.get("/credits", async (ctx) => {
      const principal = ctx.state.principal!;
      if (!principal.teamId) throw new ServerError("not_found", "No team selected");
      const wallet = await ledger.openWallet({ teamId: principal.teamId });
      ctx.body = { teamId: principal.teamId, balance: wallet.balance };
    });

    api.post("/admin/credits/grant", jsonBody({ limit: 16 * 1024 }), async (ctx) => {
      if (!(await isAdmin(ctx.state.principal!))) throw new ServerError("not_found", "Not found");
      const parsed = GrantCreditsBody.safeParse(ctx.request.body);
      if (!parsed.success) throw new ServerError("invalid_request", z.prettifyError(parsed.error).split("\n").join(" "));
      const team = await (db as Kysely<any>).selectFrom("teams").select("id").where("id", "=", parsed.data.teamId).executeTakeFirst();
      if (!team) throw new ServerError("not_found", "Team not found");
      const wallet = await ledger.openWallet({ teamId: parsed.data.teamId });
      const grant = await ledger.grant({ account: wallet.id, amount: parsed.data.amount, idempotencyKey: `admin-grant:${parsed.data.idempotencyKey}` });
      ctx.status = 201;
      ctx.body = { transactionId: grant.transactionId, teamId: parsed.data.teamId, amount: grant.amount, balance: (await ledger.getAccount(wallet.id)).balance };
    });

    mountRunRoutes(api, {
      runs,
      audit,
      stream,
      workspacesDir: config.workspacesDir,
      downloads: {
        slots: createStreamSlots({ perUser: config.maxDownloadsPerUser, total: config.maxDownloads, code: "too_many_downloads", noun: "downloads" }),
        stallMs: config.downloadStallSeconds * 1000,
      },
    });
    mountUploadRoutes(api, { db, config });
    // Billing, budgets, teams, audit, data rights: team-scoped through teams/access.ts.
    mountBillingRoutes(api, { db, auth, config });
    mountBudgetRoutes(api, { db, auth, budgets });
    mountTeamRoutes(api, { db, auth });
    mountAuditRoutes(api, { db, auth });
    mountPrivacyRoutes(api, { db, auth, config, streams });
    mountWebhookRoutes(api, { webhooks, auth });
    app.use(api.routes()).use(api.allowedMethods());

    const http = createHttpServer(app.callback());
    attachWebSocketStreams(http, { ...stream, auth, scopes: RUN_SCOPES });
    await worker.start();
    await webhooks.start();
    ready = true;

    let closing: Promise<void> | undefined;
    const server: KeenServer = {
      config,
      app,
      http,
      database,
      auth,
      ledger,
      spend,
      runs,
      worker,
      webhooks,
      queue,
      bus,
      logger,
      api,
      publicRouters: [authRoutes, stripeRoutes],
      listen: () =>
        new Promise((resolve, reject) => {
          http.once("error", reject);
          http.listen(config.port, config.host, () => {
            const { port } = http.address() as AddressInfo;
            resolve(`http://${config.host.includes(":") ? `[${config.host}]` : config.host}:${port}`);
          });
        }),
      close: () =>
        (closing ??= (async () => {
          stopping = true;
          http.close();
          await worker.stop();
          webhooks.stop();
          for (const open of streams) open.controller.abort();
          await queue.stop(8_000);
          http.closeAllConnections();
          for (const cleanup of cleanups.splice(0)) await cleanup().catch((error) => logger.warn({ err: error }, "shutdown step failed"));
          logger.info("stopped");
        })()),
    };
    return server;
  } catch (error) {
    for (const cleanup of cleanups) await cleanup().catch(() => {});
    throw error;
  }
}
