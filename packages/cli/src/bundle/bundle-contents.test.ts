// What the built `keen` bundle carries: every byte of it is read and compiled on each start.
import { existsSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const bundleDir = fileURLToPath(new URL("../../bundle", import.meta.url));

/** The source files inlined into the bundle's `chunks` (all of them by default), from the path comments esbuild writes above each. */
async function inlinedModules(chunks?: Iterable<string>): Promise<string[]> {
  if (!existsSync(bundleDir)) throw new Error(`${bundleDir} is missing: build the CLI first (npm run build -w @keen/cli)`);
  const modules: string[] = [];
  for (const name of chunks ?? (await readdir(bundleDir)).filter((file) => file.endsWith(".js"))) {
    const text = await readFile(join(bundleDir, name), "utf8");
    for (const match of text.matchAll(/^\/\/ (\S+\.[cm]?[jt]s)$/gm)) modules.push(match[1]!);
  }
  return modules;
}

/**
 * The chunks Node loads with `entry` before any of its code runs: the entry and what it imports
 * statically, transitively (`import(...)` loads later, on first use, and is not followed).
 */
async function staticClosure(entry: string): Promise<Set<string>> {
  const seen = new Set<string>();
  const pending = [entry];
  while (pending.length > 0) {
    const name = pending.pop()!;
    if (seen.has(name)) continue;
    seen.add(name);
    const text = await readFile(join(bundleDir, name), "utf8");
    for (const match of text.matchAll(/^(?:import|export)\b[^;]*?["']\.\/([^"']+\.js)["'];?$/gm)) pending.push(match[1]!);
  }
  return seen;
}

describe("the keen bundle", () => {
  it("carries zod's English messages and none of its other locales", async () => {
    const modules = await inlinedModules();
    expect(modules.some((path) => path.startsWith("../agent-core/src/"))).toBe(true); // the comments are read
    const locales = modules.filter((path) => path.includes("/node_modules/zod/") && path.includes("/locales/"));
    // `import { z } from "zod"` keeps every locale (64 files, about half a megabyte); `import * as z` only the default.
    expect(locales.map((path) => path.slice(path.lastIndexOf("/") + 1))).toEqual(["en.js"]);
  });

  it("starts `keen run` without execa: it sits in a chunk loaded on first use", async () => {
    const runEntry = (await readdir(bundleDir)).find((name) => /^run-\w+\.js$/.test(name));
    expect(runEntry).toBeDefined();
    const loaded = await staticClosure(runEntry!);
    const atStart = await inlinedModules(loaded);
    expect(atStart.some((path) => path.startsWith("../agent-core/src/lifecycle/"))).toBe(true); // the closure is followed
    expect(atStart.filter((path) => path.includes("/node_modules/execa/"))).toEqual([]);
    // Still in the bundle, for the git calls the CLI makes itself.
    expect((await inlinedModules()).some((path) => path.includes("/node_modules/execa/"))).toBe(true);
  });
});
