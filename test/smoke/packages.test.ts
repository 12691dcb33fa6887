import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

/**
 * Loads every built package the way users do (ESM import and CJS require through the
 * `exports` map), so a broken build or a missing condition fails here. Run after `npm run build`.
 */
const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const require = createRequire(join(root, "package.json"));

const expected: Record<string, string[]> = {
  "@keen/agent-core": ["startRun", "anthropic", "defineTool", "KeenEvent", "LocalWorkspace", "builtinTools"],
  "@keen/agent-core/testing": ["startMessagesServer"],
  "@keen/gateway-kit": ["openDatabase", "migrateToLatest", "errorHandler", "HttpError"],
  "@keen/cli": ["main"],
};

type ExportCondition = { types: string; default: string };

describe("built packages", () => {
  for (const [specifier, names] of Object.entries(expected)) {
    it(`${specifier} imports as ESM and requires as CJS`, async () => {
      // A separate Node process, so the test runner's own module resolution plays no part.
      const script = `const m = await import(${JSON.stringify(specifier)}); console.log(JSON.stringify(Object.keys(m)));`;
      const esmKeys = JSON.parse(execFileSync(process.execPath, ["--input-type=module", "-e", script], { cwd: root, encoding: "utf8" })) as string[];
      const cjs = require(specifier) as Record<string, unknown>;
      for (const name of names) {
        expect(esmKeys, `ESM export ${name}`).toContain(name);
        expect(cjs[name], `CJS export ${name}`).toBeDefined();
      }
    });
  }

  for (const name of ["agent-core", "gateway-kit", "cli"]) {
    it(`@keen/${name} has declaration files for every export condition`, () => {
      const dir = join(root, "packages", name);
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as {
        exports: Record<string, { import: ExportCondition; require?: ExportCondition } | string>;
      };
      for (const entry of Object.values(pkg.exports)) {
        if (typeof entry === "string") continue;
        for (const condition of [entry.import, entry.require]) {
          if (!condition) continue; // an ESM-only entry
          expect(existsSync(join(dir, condition.types)), condition.types).toBe(true);
          expect(existsSync(join(dir, condition.default)), condition.default).toBe(true);
        }
      }
    });
  }

  it("the keen bin runs from the built CLI", () => {
    const out = execFileSync(process.execPath, [join(root, "packages/cli/bin/keen.js"), "--help"], { encoding: "utf8" });
    expect(out).toContain("keen run");
  });
});
