import { startWorker } from "@keen/server";
import type { Io } from "../cli-error.js";
import { asUsageError, parseServerFlags } from "./serve.js";

export const WORKER_HELP = `Usage: keen worker [options]

Runs a worker alone: it executes run jobs from the PostgreSQL queue shared with keen serve
(DATABASE_URL is required) and serves no HTTP. On SIGTERM it checkpoints its runs and hands
them back. Takes the same settings as keen serve.`;

export async function workerCommand(argv: string[], io: Io): Promise<number> {
  const { flags, help } = parseServerFlags(argv, "worker");
  if (help) {
    io.stdout(`${WORKER_HELP}\n`);
    return 0;
  }
  const { server, stopped } = await startWorker({ env: io.env, flags }).catch(asUsageError);
  io.stderr(`keen worker ${server.worker.workerId} is taking runs\n`);
  await stopped;
  return 0;
}
