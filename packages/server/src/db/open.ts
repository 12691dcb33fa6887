import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { openDatabase } from "@keen/gateway-kit";
import { loadConfig, type ServerConfig, type ServerConfigInput } from "../config.js";

/** The settings an operator command reads, as `keen serve` takes them: env and flags. */
export interface OperatorSettings {
  env?: Record<string, string | undefined>;
  flags?: Partial<Record<keyof ServerConfigInput, unknown>>;
}

/**
 * The server's database as its settings name it: PostgreSQL at `DATABASE_URL`, otherwise PGlite
 * under `<data dir>/db`. For the commands that run beside or instead of the server (`keen
 * migrate`, `keen admin …`); the caller closes it.
 *
 * @example
 * const { config, database } = await openServerDatabase({ env: process.env });
 * try { await migrateServer(database.db); } finally { await database.close(); }
 */
export async function openServerDatabase(settings: OperatorSettings): Promise<{ config: ServerConfig; database: Awaited<ReturnType<typeof openDatabase>> }> {
  const config = loadConfig({ env: settings.env ?? process.env, flags: settings.flags ?? {} });
  await mkdir(config.dataDir, { recursive: true });
  const database = config.databaseUrl
    ? await openDatabase({ url: config.databaseUrl, ...(config.databaseSchema ? { schema: config.databaseSchema } : {}) })
    : await openDatabase({ dataDir: join(config.dataDir, "db") });
  return { config, database };
}
