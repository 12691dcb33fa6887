/**
 * A server in its own process, for tests that kill it: `node --import tsx serve-process.ts`.
 * Takes its settings from the environment and prints `ready <url>` when it serves.
 */
import { startServer } from "../start.js";

const { url } = await startServer({ env: process.env });
process.stdout.write(`ready ${url}\n`);
