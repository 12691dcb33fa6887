import { cp, mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { PGlite } from "@electric-sql/pglite";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { keenEntry, keenInProcess, listeningUrl } from "../testing/keen-process.js";

const root = fileURLToPath(new URL("../../../../", import.meta.url));
const OPS = "ops@keen.test";
const PASSWORD = "correct horse battery staple";
const env = () => ({ PATH: process.env.PATH!, KEEN_ADMIN_EMAILS: OPS });
const keen = (args: string[]) => execa("node", [...keenEntry, ...args], { cwd: root, reject: false, env: env(), extendEnv: false });

async function call(url: string, path: string, init: { token?: string; body?: unknown } = {}): Promise<{ status: number; body: any }> {
  const res = await fetch(`${url}${path}`, {
    method: init.body === undefined ? "GET" : "POST",
    headers: { ...(init.body !== undefined ? { "content-type": "application/json" } : {}), ...(init.token ? { authorization: `Bearer ${init.token}` } : {}) },
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
  });
  return { status: res.status, body: await res.json().catch(() => undefined) };
}

/** `keen serve` on the embedded database under `dataDir` while `act` runs, then SIGTERM (PGlite has one process at a time). */
async function withServer<T>(dataDir: string, act: (url: string) => Promise<T>): Promise<T> {
  const child = execa("node", [...keenEntry, "serve", "--port", "0", "--data-dir", dataDir, "--log-level", "silent", "--workers", "0"], {
    cwd: root,
    reject: false,
    env: env(),
    extendEnv: false,
  });
  try {
    return await act(await listeningUrl(child));
  } finally {
    child.kill("SIGTERM");
    await child;
  }
}

describe("keen admin on an embedded database", () => {
  let dataDir: string;
  beforeAll(async () => {
    dataDir = join(await mkdtemp(join(tmpdir(), "keen-cli-admin-")), "data");
    // The run's migrated template (test/setup) spares the first server its initdb and migrations;
    // `keen serve`'s own first start is serve.test.ts's subject.
    const template = process.env.KEEN_TEST_SERVER_DB;
    if (template) await cp(template, join(dataDir, "db"), { recursive: true });
  });
  afterAll(async () => {
    await rm(join(dataDir, ".."), { recursive: true, force: true });
  });

  it("refuses a missing or unknown action and a bad address as usage errors, before opening any database", async () => {
    const untouched = join(dataDir, "..", "never-opened");
    for (const args of [["admin"], ["admin", "promote", OPS], ["admin", "verify-email"], ["admin", "verify-email", "not-an-address", "--data-dir", untouched], ["admin", "remove-user", OPS, "b@keen.test"], ["admin", "remove-user", OPS, "--bogus"]]) {
      const result = await keenInProcess(args, env());
      expect(result.exitCode, `${args.join(" ")}: ${result.stderr}`).toBe(2);
      expect(result.stderr.trim().split("\n")).toHaveLength(1);
    }
    await expect(stat(untouched)).rejects.toMatchObject({ code: "ENOENT" });
    const help = await keenInProcess(["help", "admin"], env());
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toContain("verify-email");
    expect(help.stdout).toContain("remove-user");
  });

  it("erases a squatter of a listed address, then verifies its owner, who is then an admin", async () => {
    const squatter = await withServer(dataDir, async (url) => {
      const signup = await call(url, "/v1/auth/signup", { body: { email: OPS, password: PASSWORD } });
      expect(signup.status).toBe(201);
      const me = await call(url, "/v1/me", { token: signup.body.accessToken });
      expect(me.body.admin).toBe(false);
      const grant = await call(url, "/v1/admin/credits/grant", { token: signup.body.accessToken, body: { teamId: signup.body.teamId, amount: 1_000_000, idempotencyKey: "squat-grant" } });
      expect(grant.status).toBe(404);
      return { userId: signup.body.user.id as string, token: signup.body.accessToken as string };
    });

    const removed = await keen(["admin", "remove-user", OPS, "--data-dir", dataDir]);
    expect(removed.exitCode, removed.stderr).toBe(0);
    expect(removed.stdout).toContain(`erased user ${squatter.userId}`);
    expect(removed.stdout).toContain(`${OPS} is free to sign up with again`);
    const again = await keen(["admin", "remove-user", OPS, "--data-dir", dataDir]);
    expect(again.exitCode).toBe(1);
    expect(again.stderr).toContain(`No account has the email ${OPS}`);

    const owner = await withServer(dataDir, async (url) => {
      expect((await call(url, "/v1/me", { token: squatter.token })).status).toBe(401);
      const signup = await call(url, "/v1/auth/signup", { body: { email: OPS, password: PASSWORD } });
      expect(signup.status).toBe(201);
      expect((await call(url, "/v1/me", { token: signup.body.accessToken })).body.admin).toBe(false);
      return { userId: signup.body.user.id as string, teamId: signup.body.teamId as string };
    });

    const verified = await keen(["admin", "verify-email", OPS.toUpperCase(), "--data-dir", dataDir]);
    expect(verified.exitCode, verified.stderr).toBe(0);
    expect(verified.stdout).toContain(`${OPS} (user ${owner.userId}) is now verified; it is a server admin`);

    await withServer(dataDir, async (url) => {
      const login = await call(url, "/v1/auth/login", { body: { email: OPS, password: PASSWORD } });
      expect(login.status).toBe(200);
      expect((await call(url, "/v1/me", { token: login.body.accessToken })).body.admin).toBe(true);
      const grant = await call(url, "/v1/admin/credits/grant", { token: login.body.accessToken, body: { teamId: owner.teamId, amount: 1_000_000, idempotencyKey: "owner-grant" } });
      expect(grant.status).toBe(201);
    });

    // The verified owner is not a squatter: remove-user leaves them alone.
    const refused = await keen(["admin", "remove-user", OPS, "--data-dir", dataDir]);
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toContain("is left alone");

    const db = await PGlite.create(join(dataDir, "db"));
    try {
      const trail = await db.query<{ action: string; target: string; actor_id: string | null }>(
        "select action, target, actor_id from audit_log where action in ('privacy.erase', 'admin.remove_user', 'admin.verify_email') order by seq",
      );
      expect(trail.rows).toEqual([
        { action: "privacy.erase", target: `user:${squatter.userId}`, actor_id: null },
        { action: "admin.remove_user", target: `user:${squatter.userId}`, actor_id: null },
        { action: "admin.verify_email", target: `user:${owner.userId}`, actor_id: null },
      ]);
      const users = await db.query<{ id: string; email_verified: boolean }>("select id, email_verified from users where email = $1", [OPS]);
      expect(users.rows).toEqual([{ id: owner.userId, email_verified: true }]);
    } finally {
      await db.close();
    }
  }, 600_000);
});
