import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

/**
 * Each feature of the built gateway-kit imports on its own, in a fresh Node process, without
 * loading the heavy packages it does not need (they are optional peer dependencies). Run after
 * `npm run build`.
 */
const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const hooks = join(root, "test/smoke/fixtures/register-imports.mjs");
const pkg = JSON.parse(readFileSync(join(root, "packages/gateway-kit/package.json"), "utf8")) as {
  exports: Record<string, unknown>;
  peerDependenciesMeta: Record<string, { optional?: boolean }>;
};
const HEAVY = ["pg", "@electric-sql/pglite", "stripe", "@node-rs/argon2", "@simplewebauthn/server", "tar-stream", "yauzl"];
const scratch = mkdtempSync(join(tmpdir(), "keen-subpaths-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

let runs = 0;
/** Runs `body` as an ES module in a fresh process; returns its stdout and the heavy packages it loaded. */
function inFreshProcess(body: string, env: Record<string, string> = {}): { out: string; heavy: string[] } {
  const log = join(scratch, `imports-${runs++}.log`);
  const out = execFileSync(process.execPath, ["--import", hooks, "--input-type=module", "-e", body], {
    cwd: root,
    encoding: "utf8",
    env: { ...process.env, ...env, KEEN_IMPORT_LOG: log },
  });
  let urls = "";
  try {
    urls = readFileSync(log, "utf8");
  } catch {
    // nothing was resolved through the hooks
  }
  const heavy = HEAVY.filter((name) => urls.includes(`/node_modules/${name}/`));
  return { out, heavy };
}

const subpaths = Object.keys(pkg.exports).filter((key) => key !== "./package.json");

describe("@keen/gateway-kit subpath exports", () => {
  it("declares every heavy package as an optional peer dependency", () => {
    for (const name of HEAVY) expect(pkg.peerDependenciesMeta[name]?.optional, name).toBe(true);
  });

  it("covers each feature folder", () => {
    expect(subpaths).toEqual(
      expect.arrayContaining([".", "./auth", "./credits", "./billing", "./budgets", "./spend", "./limits", "./screening", "./audit", "./privacy", "./db", "./testing"]),
    );
  });

  for (const subpath of subpaths) {
    const specifier = subpath === "." ? "@keen/gateway-kit" : `@keen/gateway-kit/${subpath.slice(2)}`;
    it(`${specifier} imports without loading any heavy package`, () => {
      const { out, heavy } = inFreshProcess(`const m = await import(${JSON.stringify(specifier)}); console.log(Object.keys(m).length);`);
      expect(Number(out.trim())).toBeGreaterThan(0);
      expect(heavy).toEqual([]);
    });

    // The testing helpers build on vitest, which loads only as an ES module.
    it.skipIf(subpath === "./testing")(`${specifier} requires as CommonJS without loading any heavy package`, () => {
      const script = `const before = new Set(Object.keys(require.cache)); require(${JSON.stringify(specifier)});
        console.log(JSON.stringify(Object.keys(require.cache).filter((k) => !before.has(k))));`;
      const loaded = JSON.parse(execFileSync(process.execPath, ["-e", script], { cwd: root, encoding: "utf8" })) as string[];
      expect(HEAVY.filter((name) => loaded.some((file) => file.includes(`/node_modules/${name}/`)))).toEqual([]);
    });
  }

  it("loads only PGlite for an embedded database, and only pg for a PostgreSQL url", () => {
    const embedded = inFreshProcess(`const { openDatabase } = await import("@keen/gateway-kit/db");
      const database = await openDatabase(); await database.close(); console.log("ok");`);
    expect(embedded.heavy).toEqual(["@electric-sql/pglite"]);
    const url = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
    const postgres = inFreshProcess(`const { openDatabase } = await import("@keen/gateway-kit/db");
      const database = await openDatabase({ url: ${JSON.stringify(url)} }); await database.close(); console.log("ok");`);
    expect(postgres.heavy).toEqual(["pg"]);
  });

  it("names the package to install when an optional dependency is missing", () => {
    const { out } = inFreshProcess(
      `const { openDatabase } = await import("@keen/gateway-kit/db");
       const { screenArchive } = await import("@keen/gateway-kit/screening");
       for (const attempt of [() => openDatabase(), () => screenArchive(Buffer.from("PK\\x03\\x04" + "x".repeat(64)))]) {
         try { await attempt(); console.log("no error"); } catch (e) { console.log(e.code + " " + e.message); }
       }`,
      { KEEN_HIDE_PACKAGES: "@electric-sql/pglite,yauzl" },
    );
    const lines = out.trim().split("\n");
    expect(lines[0]).toMatch(/^missing_dependency .*"@electric-sql\/pglite".*npm install @electric-sql\/pglite/);
    expect(lines[1]).toMatch(/^missing_dependency .*"yauzl".*npm install yauzl/);
  });

  it("shares one class per error across entries, so instanceof holds between them", () => {
    const { out } = inFreshProcess(`const root = await import("@keen/gateway-kit"); const http = await import("@keen/gateway-kit/http");
      const db = await import("@keen/gateway-kit/db");
      console.log(root.HttpError === http.HttpError, root.MissingDependencyError === db.MissingDependencyError);`);
    expect(out.trim()).toBe("true true");
  });
});

// The CommonJS build loads optional dependencies through require; check that path once too.
describe("@keen/gateway-kit CommonJS build", () => {
  it("creates a Stripe client through the optional dependency", () => {
    const require = createRequire(join(root, "package.json"));
    const billing = require("@keen/gateway-kit/billing") as { createStripeClient(o: { apiKey: string }): { customers: unknown } };
    expect(billing.createStripeClient({ apiKey: "sk_test_x" }).customers).toBeDefined();
  });
});
