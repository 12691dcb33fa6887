/**
 * A server in its own process, for tests that kill or stop it: `node --import tsx serve-process.ts`.
 * Takes its settings from the environment, prints `ready <url>` when it serves and `stopped`
 * after a graceful stop (SIGTERM/SIGINT); the process then exits when nothing is left open,
 * as `keen serve` does.
 */
import { startServer } from "../start.js";

const { url, stopped } = await startServer({ env: process.env });
process.stdout.write(`ready ${url}\n`);
await stopped;
process.stdout.write("stopped\n");
