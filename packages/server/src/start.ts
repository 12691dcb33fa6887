import { ConfigError, loadConfig, type ServerConfigInput } from "./config.js";
import { migrateServer } from "./db/migrations.js";
import { openServerDatabase } from "./db/open.js";
import { createServer, type KeenServer } from "./server.js";

export interface StartOptions {
  env?: Record<string, string | undefined>;
  flags?: Partial<Record<keyof ServerConfigInput, unknown>>;
  /** Handle SIGTERM and SIGINT with a graceful stop (default true). */
  signals?: boolean;
  /** Called with one line per lifecycle step (default: nothing; logs go through pino). */
  onReady?: (url: string) => void;
}

/**
 * Starts a server the way `keen serve` does: config from env and flags, listen, and a graceful
 * stop on SIGTERM or SIGINT (runs checkpointed and handed back, streams ended) within 10 s.
 * Resolves once the server is ready; `stopped` resolves when it has shut down.
 *
 * @example
 * const { url } = await startServer({ env: process.env, flags: { port: 8080 } });
 */
export async function startServer(options: StartOptions = {}): Promise<{ server: KeenServer; url: string; stopped: Promise<void> }> {
  const config = loadConfig({ env: options.env ?? process.env, flags: options.flags ?? {} });
  const server = await createServer(config);
  const url = await server.listen();
  // Where verification emails go: an operator without a mail webhook reads them in the outbox.
  const mail = server.config.mailWebhookUrl ? "webhook" : server.config.mailOutboxDir;
  server.logger.info({ url, database: server.database.kind, queue: server.queue.kind, mail }, "ready");
  options.onReady?.(url);
  let resolveStopped!: () => void;
  const stopped = new Promise<void>((resolve) => (resolveStopped = resolve));
  if (options.signals !== false) stopOnSignals(server, resolveStopped);
  return { server, url, stopped };
}

/**
 * SIGTERM or SIGINT → a graceful stop: no new requests or jobs, running runs checkpointed and
 * handed back, streams ended, connections closed. A stop that takes over 10 s exits 1.
 */
function stopOnSignals(server: KeenServer, onStopped: () => void): void {
  const stop = (signal: string) => {
    server.logger.info({ signal }, "stopping");
    const deadline = setTimeout(() => {
      server.logger.error("shutdown took longer than 10 s; exiting");
      process.exit(1);
    }, 10_000);
    deadline.unref();
    void server.close().then(onStopped, (error) => {
      server.logger.error({ err: error }, "shutdown failed");
      onStopped();
    });
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
}

/**
 * Runs the migrations alone, as `keen migrate` does.
 *
 * @example
 * const { applied } = await migrateOnly({ env: process.env });
 */
export async function migrateOnly(options: Pick<StartOptions, "env" | "flags"> = {}): Promise<{ applied: string[] }> {
  const { database } = await openServerDatabase(options);
  try {
    return await migrateServer(database.db);
  } finally {
    await database.close();
  }
}

/**
 * Starts a worker alone, as `keen worker` does: no HTTP, it only executes run jobs from the
 * shared PostgreSQL queue, and hands its runs back (checkpointed) on SIGTERM.
 *
 * @example
 * const { stopped } = await startWorker({ env: process.env });
 */
export async function startWorker(options: Omit<StartOptions, "onReady"> = {}): Promise<{ server: KeenServer; stopped: Promise<void> }> {
  const config = loadConfig({ env: options.env ?? process.env, flags: options.flags ?? {} });
  if (!config.databaseUrl) throw new ConfigError("keen worker needs DATABASE_URL: a worker alone shares its queue through PostgreSQL");
  if (config.workers === 0) throw new ConfigError("invalid --workers (KEEN_WORKERS): a worker process needs at least 1");
  const server = await createServer(config);
  server.logger.info({ workerId: server.worker.workerId, queue: server.queue.kind }, "worker ready");
  let resolveStopped!: () => void;
  const stopped = new Promise<void>((resolve) => (resolveStopped = resolve));
  if (options.signals !== false) stopOnSignals(server, resolveStopped);
  return { server, stopped };
}
