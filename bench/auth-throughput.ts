// Requests/s of an API-key-authenticated route against a bare Koa route, in one run, over
// loopback with keep-alive. Run: npx tsx bench/auth-throughput.ts  (DATABASE_URL for PostgreSQL)
import { Agent, createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Router } from "@koa/router";
import Koa from "koa";
import {
  authenticate,
  authMigrations,
  createAuthService,
  createKyselyAuthStores,
  errorHandler,
  JwtKeySet,
  migrateToLatest,
  openDatabase,
  requireScope,
} from "../packages/gateway-kit/src/index.js";

const REQUESTS = Number(process.env.REQUESTS ?? 20_000);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 32);
const ROUNDS = 3;

async function listen(app: Koa): Promise<{ server: Server; port: number }> {
  const server = createServer(app.callback());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, port: (server.address() as AddressInfo).port };
}

/** Sends `total` GETs with `CONCURRENCY` keep-alive connections; returns requests per second. */
async function load(port: number, path: string, headers: Record<string, string>, total: number): Promise<number> {
  const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  let sent = 0;
  let failures = 0;
  const one = () =>
    new Promise<void>((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port, path, headers, agent }, (res) => {
        if (res.statusCode !== 200) failures += 1;
        res.resume();
        res.on("end", resolve);
      });
      req.on("error", reject);
      req.end();
    });
  const worker = async () => {
    while (sent < total) {
      sent += 1;
      await one();
    }
  };
  const started = process.hrtime.bigint();
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  agent.destroy();
  if (failures > 0) throw new Error(`${failures} requests to ${path} failed`);
  return total / seconds;
}

const database = await openDatabase(process.env.DATABASE_URL ? { url: process.env.DATABASE_URL, schema: "bench_auth" } : {});
await migrateToLatest(database.db, [authMigrations]);
const auth = createAuthService({
  stores: createKyselyAuthStores(database.db),
  keys: await JwtKeySet.generate(),
  issuer: "https://bench.keen",
  audience: "bench",
  passwordHashing: { memoryCost: 1024, timeCost: 1 },
});
const email = `bench-${Date.now()}@example.com`;
const user = await auth.signup({ email, password: "benchmark password" });
const principal = await auth.verifyAccessToken(user.accessToken);
const { key } = await auth.createApiKey(principal, { name: "bench", scopes: ["sessions:read"] }, { password: "benchmark password" });

const bareApp = new Koa();
bareApp.use(errorHandler());
const bareRouter = new Router();
bareRouter.get("/ping", (ctx) => {
  ctx.body = { ok: true };
});
bareApp.use(bareRouter.routes());

const authedApp = new Koa();
authedApp.use(errorHandler());
const authedRouter = new Router();
authedRouter.get("/ping", authenticate({ service: auth }), requireScope("sessions:read"), (ctx) => {
  ctx.body = { ok: true };
});
authedApp.use(authedRouter.routes());

const bare = await listen(bareApp);
const authed = await listen(authedApp);
const headers = { authorization: `Bearer ${key}` };

// Warm up both (JIT, connection pools, the key cache), then alternate rounds and keep the best.
await load(bare.port, "/ping", {}, 2000);
await load(authed.port, "/ping", headers, 2000);
let bareBest = 0;
let authedBest = 0;
for (let round = 0; round < ROUNDS; round++) {
  bareBest = Math.max(bareBest, await load(bare.port, "/ping", {}, REQUESTS));
  authedBest = Math.max(authedBest, await load(authed.port, "/ping", headers, REQUESTS));
}

const ratio = authedBest / bareBest;
console.log(`database:            ${database.kind}`);
console.log(`requests per round:  ${REQUESTS} (concurrency ${CONCURRENCY}, keep-alive, best of ${ROUNDS})`);
console.log(`bare Koa route:      ${bareBest.toFixed(0)} req/s`);
console.log(`API-key route:       ${authedBest.toFixed(0)} req/s`);
console.log(`ratio:               ${(ratio * 100).toFixed(1)}% (target >= 70%)`);

bare.server.close();
authed.server.close();
if (process.env.DATABASE_URL) await database.db.schema.dropSchema("bench_auth").ifExists().cascade().execute();
await database.close();
process.exitCode = ratio >= 0.7 ? 0 : 1;
