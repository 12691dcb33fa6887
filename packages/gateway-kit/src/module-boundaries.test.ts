import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

/**
 * gateway-kit's folders (auth, audit, credits, …) are its modules. A module may use another only
 * through that module's public `index.ts` (or its `internal.ts`, what siblings may use and no entry
 * of the package publishes), the folders may not import each other in a circle, and
 * the shared files at the top of `src/` (errors, options, secret redaction, …) import no folder.
 * Imports are read from the sources, type-only ones included; tests are not part of the graph.
 */
const src = dirname(fileURLToPath(import.meta.url));

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith(".ts") && !entry.name.endsWith(".test.ts") ? [path] : [];
  });
}

// Static imports and re-exports begin a line; dynamic ones are `import("…")` anywhere.
const IMPORT = /^[ \t]*(?:import|export)\s+(?:type\s+)?(?:[^'";]*?\s+from\s+)?["']([^"']+)["']|\bimport\(\s*["']([^"']+)["']\s*\)/gm;

/** Relative import specifiers of a file, resolved to paths under `src/` (`./x.js` → `x.ts`). */
export function relativeImports(file: string, text: string): string[] {
  const found: string[] = [];
  for (const match of text.matchAll(IMPORT)) {
    const specifier = match[1] ?? match[2]!;
    if (!specifier.startsWith(".")) continue;
    found.push(relative(src, resolve(dirname(file), specifier)).replace(/\.js$/, ".ts"));
  }
  return found;
}

/** The module a file under `src/` belongs to: its top folder, or null for a shared top-level file. */
const moduleOf = (path: string) => (path.includes("/") ? path.slice(0, path.indexOf("/")) : null);

/** Every cycle in a directed graph, each as the list of its nodes (one rotation per cycle). */
export function findCycles(edges: ReadonlyMap<string, ReadonlySet<string>>): string[][] {
  const cycles: string[][] = [];
  const seen = new Set<string>();
  const nodes = [...edges.keys()].sort();
  for (const start of nodes) {
    // Cycles through `start` whose other nodes all sort after it: each cycle is found once.
    const walk = (node: string, path: string[]) => {
      for (const next of [...(edges.get(node) ?? [])].sort()) {
        if (next === start) cycles.push([...path]);
        else if (next > start && !path.includes(next)) walk(next, [...path, next]);
      }
    };
    walk(start, [start]);
    seen.add(start);
  }
  return cycles;
}

const files = sourceFiles(src).map((path) => ({ path: relative(src, path), imports: relativeImports(path, readFileSync(path, "utf8")) }));

describe("module boundaries", () => {
  it("reads the imports of the sources", () => {
    // A guard against a parser that silently finds nothing: these imports exist.
    const audit = files.find((f) => f.path === "audit/audit-log.ts");
    expect(audit?.imports).toEqual(expect.arrayContaining(["errors.ts", "audit/canonical-json.ts"]));
    expect(files.length).toBeGreaterThan(50);
  });

  it("finds cycles in a graph", () => {
    const graph = new Map([
      ["a", new Set(["b"])],
      ["b", new Set(["c"])],
      ["c", new Set(["a", "d"])],
      ["d", new Set<string>()],
    ]);
    expect(findCycles(graph)).toEqual([["a", "b", "c"]]);
    expect(findCycles(new Map([["a", new Set(["b"])], ["b", new Set<string>()]]))).toEqual([]);
  });

  it("has no import cycle between modules", () => {
    const edges = new Map<string, Set<string>>();
    for (const file of files) {
      const from = moduleOf(file.path);
      if (!from) continue;
      for (const target of file.imports) {
        const to = moduleOf(target);
        if (!to || to === from) continue;
        if (!edges.has(from)) edges.set(from, new Set());
        edges.get(from)!.add(to);
        if (!edges.has(to)) edges.set(to, new Set());
      }
    }
    expect(findCycles(edges).map((cycle) => [...cycle, cycle[0]].join(" → "))).toEqual([]);
  });

  it("imports another module only through its public index", () => {
    const reaching: string[] = [];
    for (const file of files) {
      const from = moduleOf(file.path);
      for (const target of file.imports) {
        const to = moduleOf(target);
        if (to && to !== from && target !== `${to}/index.ts` && target !== `${to}/internal.ts`) reaching.push(`${file.path} → ${target}`);
      }
    }
    expect(reaching).toEqual([]);
  });

  it("publishes no module's internal.ts from an entry of the package", () => {
    const internals = files.filter((f) => f.path.endsWith("/internal.ts")).map((f) => f.path);
    expect(internals.length).toBeGreaterThan(0);
    const entries = files.filter((f) => f.path === "index.ts" || f.path.endsWith("/index.ts"));
    const publishing = entries.flatMap((f) => f.imports.filter((target) => target.endsWith("/internal.ts") && moduleOf(target) !== moduleOf(f.path) && f.path !== "testing/index.ts").map((target) => `${f.path} → ${target}`));
    expect(publishing).toEqual([]);
  });

  it("keeps the shared top-level files free of module imports", () => {
    const shared = files.filter((f) => moduleOf(f.path) === null && f.path !== "index.ts");
    expect(shared.length).toBeGreaterThan(3);
    const offending = shared.flatMap((f) => f.imports.filter((target) => moduleOf(target) !== null).map((target) => `${f.path} → ${target}`));
    expect(offending).toEqual([]);
  });
});
