import { parseArgs } from "node:util";
import { ConfigError, SETTINGS, settingsHelp, startServer, type ServerConfigInput } from "@keen/server";
import { UsageError, type Io } from "../cli-error.js";

export const SERVE_HELP = `Usage: keen serve [options]

Starts the keen server: the REST API, live event streams and run workers. With no settings it
runs on an embedded database under ./.keen-server; set DATABASE_URL for PostgreSQL. Every
setting can come from its environment variable or its flag (the flag wins).

Options:
${settingsHelp()}
  -h, --help                show this help`;

/**
 * Flags named after the server's settings; `--local-mode` alone means true. Positional
 * arguments are refused unless `allowPositionals` (then returned in order).
 */
export function parseServerFlags(
  argv: string[],
  command: string,
  options: { allowPositionals?: boolean } = {},
): { flags: Partial<Record<keyof ServerConfigInput, unknown>>; help: boolean; positionals: string[] } {
  const known: Record<string, { type: "string" | "boolean"; short?: string }> = { help: { type: "boolean", short: "h" } };
  for (const setting of SETTINGS) known[setting.flag.slice(2)] = { type: setting.key === "localMode" ? "boolean" : "string" };
  let values: Record<string, string | boolean | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({ args: argv, strict: true, allowPositionals: options.allowPositionals === true, options: known }));
  } catch (error) {
    throw new UsageError(`${(error as Error).message.split("\n")[0]} (see keen ${command} --help)`);
  }
  const flags: Partial<Record<keyof ServerConfigInput, unknown>> = {};
  for (const setting of SETTINGS) {
    const value = values[setting.flag.slice(2)];
    if (value !== undefined) flags[setting.key] = value;
  }
  return { flags, help: Boolean(values.help), positionals };
}

/** A config problem is the user's: one line, exit code 2. */
export function asUsageError(error: unknown): never {
  if (error instanceof ConfigError) throw new UsageError(error.message);
  throw error;
}

export async function serveCommand(argv: string[], io: Io): Promise<number> {
  const { flags, help } = parseServerFlags(argv, "serve");
  if (help) {
    io.stdout(`${SERVE_HELP}\n`);
    return 0;
  }
  const { url, stopped } = await startServer({ env: io.env, flags }).catch(asUsageError);
  io.stderr(`keen server listening on ${url}\n`);
  await stopped;
  return 0;
}
