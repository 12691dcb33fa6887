import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { keenEntry, listeningUrl } from "../testing/keen-process.js";

const root = fileURLToPath(new URL("../../../../", import.meta.url));
const keen = (args: string[], options: { env?: Record<string, string> } = {}) =>
  execa("node", [...keenEntry, ...args], { cwd: root, reject: false, env: { ...options.env }, extendEnv: false, all: false });

describe("keen serve, migrate, worker", () => {
  let dataDir: string;
  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "keen-cli-serve-"));
  });
  afterAll(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it("refuses a bad setting with one line and exit code 2", async () => {
    const result = await keen(["serve", "--port", "99999"], { env: { PATH: process.env.PATH! } });
    expect(result.exitCode).toBe(2);
    expect(result.stderr.trim().split("\n")).toHaveLength(1);
    expect(result.stderr).toContain("--port (PORT)");
    const env = await keen(["serve"], { env: { PATH: process.env.PATH!, DATABASE_URL: "mysql://nope" } });
    expect(env.exitCode).toBe(2);
    expect(env.stderr).toContain("DATABASE_URL");
    const unknown = await keen(["serve", "--prot", "80"], { env: { PATH: process.env.PATH! } });
    expect(unknown.exitCode).toBe(2);
  }, 120_000);

  it("lists every setting in keen serve --help", async () => {
    const result = await keen(["serve", "--help"], { env: { PATH: process.env.PATH! } });
    expect(result.exitCode).toBe(0);
    for (const flag of ["--port", "--data-dir", "--database-url", "--model-base-url", "--workers", "--local-mode"]) expect(result.stdout).toContain(flag);
  }, 120_000);

  it("keen worker needs DATABASE_URL", async () => {
    const result = await keen(["worker", "--data-dir", dataDir], { env: { PATH: process.env.PATH! } });
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain("DATABASE_URL");
  }, 120_000);

  it("migrates an embedded database, then finds it up to date", async () => {
    const dir = join(dataDir, "migrate");
    const first = await keen(["migrate", "--data-dir", dir], { env: { PATH: process.env.PATH! } });
    expect(first.exitCode, first.stderr).toBe(0);
    expect(first.stdout).toContain("server_0001_runs");
    const second = await keen(["migrate", "--data-dir", dir], { env: { PATH: process.env.PATH! } });
    expect(second.stdout).toContain("up to date");
  }, 120_000);

  it("serves on embedded defaults, becomes ready, and exits 0 on SIGTERM", async () => {
    const child = execa("node", [...keenEntry, "serve", "--port", "0", "--data-dir", join(dataDir, "serve"), "--log-level", "silent"], {
      cwd: root,
      reject: false,
      env: { PATH: process.env.PATH! },
      extendEnv: false,
    });
    const url = await listeningUrl(child);
    const ready = await fetch(`${url}/readyz`);
    expect(ready.status).toBe(200);
    const stoppingAt = Date.now();
    child.kill("SIGTERM");
    const result = await child;
    expect(result.exitCode).toBe(0);
    expect(Date.now() - stoppingAt).toBeLessThan(10_000);
  }, 120_000);
});
