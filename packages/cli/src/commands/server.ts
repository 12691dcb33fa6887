import type { Io } from "../cli-error.js";

// The server (database drivers, job queue) loads only when a server command runs, so
// `keen run` and `keen demo` start as fast as before.

/** `keen serve`: see serve.ts. */
export async function serveCommand(argv: string[], io: Io): Promise<number> {
  return (await import("./serve.js")).serveCommand(argv, io);
}

/** `keen migrate`: see migrate.ts. */
export async function migrateCommand(argv: string[], io: Io): Promise<number> {
  return (await import("./migrate.js")).migrateCommand(argv, io);
}

/** `keen worker`: see worker.ts. */
export async function workerCommand(argv: string[], io: Io): Promise<number> {
  return (await import("./worker.js")).workerCommand(argv, io);
}

/** `keen admin`: see admin.ts. */
export async function adminCommand(argv: string[], io: Io): Promise<number> {
  return (await import("./admin.js")).adminCommand(argv, io);
}
