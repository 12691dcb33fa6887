/**
 * A server in its own process, for tests that kill or stop it: `node --import tsx serve-process.ts`.
 * Takes its settings from the environment, prints `ready <url>` when it serves and `stopped`
 * after a graceful stop (SIGTERM/SIGINT); the process then exits when nothing is left open,
 * as `keen serve` does.
 */
import { createKyselyAuthStores } from "@keen/gateway-kit";
import { verifyAccountEmail } from "../admin-accounts.js";
import { startServer } from "../start.js";

const { server, url, stopped } = await startServer({ env: process.env });
process.stdout.write(`ready ${url}\n`);
// The operator's part, for the tests' listed admins: verify each listed address once it has an
// account (the harness's `signup` waits for it), as `keen admin verify-email` would.
const users = createKyselyAuthStores(server.database.db).users;
const pending = new Set(server.config.adminEmails);
const verifier = setInterval(() => {
  for (const email of pending) {
    void users
      .findByEmail(email)
      .then(async (user) => {
        if (user && pending.delete(email)) await verifyAccountEmail(server.database.db, server.config, email);
      })
      .catch(() => {});
  }
}, 100);
verifier.unref();
await stopped;
clearInterval(verifier);
process.stdout.write("stopped\n");
