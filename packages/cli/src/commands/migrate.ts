import { migrateOnly } from "@keen/server";
import type { Io } from "../cli-error.js";
import { asUsageError, parseServerFlags } from "./serve.js";

export const MIGRATE_HELP = `Usage: keen migrate [--database-url URL | --data-dir DIR]

Brings the server's database up to date (gateway-kit's modules and the server's own tables)
and exits; keen serve also does this on start. Takes the same settings as keen serve.`;

export async function migrateCommand(argv: string[], io: Io): Promise<number> {
  const { flags, help } = parseServerFlags(argv, "migrate");
  if (help) {
    io.stdout(`${MIGRATE_HELP}\n`);
    return 0;
  }
  const { applied } = await migrateOnly({ env: io.env, flags }).catch(asUsageError);
  io.stdout(applied.length === 0 ? "database is up to date\n" : `applied ${applied.length} migrations:\n${applied.map((m) => `  ${m}\n`).join("")}`);
  return 0;
}
