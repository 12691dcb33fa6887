import { KeenError } from "../errors.js";

/**
 * Glob matching in time linear in the path for a given pattern. Globs come from the model, and
 * a regular-expression translation (picomatch's) backtracks: `*a*a*a*b` against one 255-character
 * name takes seconds, longer patterns hours, on the thread every agent shares. Here a pattern is
 * compiled to a small automaton and simulated over all its states at once.
 *
 * Syntax: `*` (any characters but `/`), `**` as a whole segment (any number of folders), `?`,
 * `[abc]`, `[a-z]`, `[!a]`/`[^a]`, `{a,b}` (nested, at most 256 alternatives), `\` escapes.
 * Dot files match like any other (`dot: true`).
 *
 * @example
 * const match = compileGlob("src/**\/*.{ts,tsx}");
 * match("src/a/b.tsx"); // true
 */
export function compileGlob(pattern: string): (path: string) => boolean {
  if (pattern.length > MAX_PATTERN_CHARS) throw new KeenError("invalid_glob", `The glob is longer than ${MAX_PATTERN_CHARS} characters`);
  const alternatives = expandBraces(pattern);
  // `src/**` matches `src` itself too.
  for (const alternative of [...alternatives]) if (alternative.endsWith("/**") && alternative.length > 3) alternatives.push(alternative.slice(0, -3));
  const machines = alternatives.map(compileOne);
  return (path) => machines.some((machine) => run(machine, path));
}

const MAX_PATTERN_CHARS = 1000;
const MAX_ALTERNATIVES = 256;

type Step =
  | { kind: "char"; test: (c: string) => boolean }
  /** Any run of characters but `/`. */
  | { kind: "star" }
  /** `**\/`: nothing, or anything ending in `/`. */
  | { kind: "folders" }
  /** A final `**`: anything at all. */
  | { kind: "rest" };

function expandBraces(pattern: string): string[] {
  let results = [""];
  let i = 0;
  const parse = (text: string, from: number): { alternatives: string[]; end: number } | null => {
    // Returns the alternatives of the brace group opening at `from` (text[from] === "{").
    const parts: string[][] = [[""]];
    let depth = 0;
    let current = "";
    for (let j = from + 1; j < text.length; j++) {
      const c = text[j]!;
      if (c === "\\" && j + 1 < text.length) {
        current += c + text[j + 1];
        j++;
      } else if (c === "{") {
        depth++;
        current += c;
      } else if (c === "}" && depth > 0) {
        depth--;
        current += c;
      } else if (c === "}" || (c === "," && depth === 0)) {
        parts[parts.length - 1] = expandBraces(current);
        if (c === "}") {
          if (parts.length === 1) return null; // `{a}` is literal.
          return { alternatives: parts.flat(), end: j };
        }
        parts.push([""]);
        current = "";
      } else {
        current += c;
      }
    }
    return null;
  };
  while (i < pattern.length) {
    const c = pattern[i]!;
    if (c === "\\" && i + 1 < pattern.length) {
      results = results.map((r) => r + c + pattern[i + 1]);
      i += 2;
      continue;
    }
    if (c === "{") {
      const group = parse(pattern, i);
      if (group) {
        const next: string[] = [];
        for (const r of results) for (const alternative of group.alternatives) next.push(r + alternative);
        if (next.length > MAX_ALTERNATIVES) throw new KeenError("invalid_glob", `The glob expands to more than ${MAX_ALTERNATIVES} alternatives`);
        results = next;
        i = group.end + 1;
        continue;
      }
    }
    results = results.map((r) => r + c);
    i++;
  }
  return results;
}

function compileOne(text: string): Step[] {
  // By code point, so a character outside the BMP is one character, as in the path.
  const pattern = Array.from(text);
  const steps: Step[] = [];
  let i = 0;
  while (i < pattern.length) {
    const c = pattern[i]!;
    if (c === "*") {
      let end = i;
      while (pattern[end] === "*") end++;
      const segmentStart = i === 0 || pattern[i - 1] === "/";
      const segmentEnd = end === pattern.length || pattern[end] === "/";
      if (end - i >= 2 && segmentStart && segmentEnd) {
        if (end === pattern.length) {
          steps.push({ kind: "rest" });
          i = end;
        } else {
          steps.push({ kind: "folders" });
          i = end + 1; // The slash belongs to the step.
        }
      } else {
        if (steps.at(-1)?.kind !== "star") steps.push({ kind: "star" });
        i = end;
      }
      continue;
    }
    if (c === "?") {
      steps.push({ kind: "char", test: (x) => x !== "/" });
      i++;
      continue;
    }
    if (c === "[") {
      const cls = parseClass(pattern, i);
      if (cls) {
        steps.push({ kind: "char", test: cls.test });
        i = cls.end + 1;
        continue;
      }
    }
    let literal = c;
    if (c === "\\" && i + 1 < pattern.length) {
      literal = pattern[i + 1]!;
      i++;
    }
    steps.push({ kind: "char", test: (x) => x === literal });
    i++;
  }
  return steps;
}

function parseClass(pattern: string[], from: number): { test: (c: string) => boolean; end: number } | null {
  let j = from + 1;
  const negated = pattern[j] === "!" || pattern[j] === "^";
  if (negated) j++;
  const ranges: Array<[string, string]> = [];
  let first = true;
  for (; j < pattern.length; j++) {
    const c = pattern[j]!;
    if (c === "]" && !first) {
      return { test: (x) => x !== "/" && ranges.some(([lo, hi]) => x >= lo && x <= hi) !== negated, end: j };
    }
    first = false;
    let lo = c;
    if (c === "\\" && j + 1 < pattern.length) lo = pattern[++j]!;
    if (pattern[j + 1] === "-" && j + 2 < pattern.length && pattern[j + 2] !== "]") {
      ranges.push([lo, pattern[j + 2]!]);
      j += 2;
    } else {
      ranges.push([lo, lo]);
    }
  }
  return null;
}

/** Simulates the automaton over every state at once: O(path length × pattern length). */
function run(steps: Step[], path: string): boolean {
  let states = closure(steps, new Set([0]));
  for (const c of path) {
    const next = new Set<number>();
    for (const state of states) {
      if (state < 0) {
        next.add(state);
        if (c === "/") next.add(-state);
        continue;
      }
      const step = steps[state];
      if (!step) continue;
      switch (step.kind) {
        case "char":
          if (step.test(c)) next.add(state + 1);
          break;
        case "star":
          if (c !== "/") next.add(state);
          break;
        case "folders":
          // Inside the folders: only a `/` leads on (the step may be skipped only at its start).
          next.add(-(state + 1));
          if (c === "/") next.add(state + 1);
          break;
        case "rest":
          next.add(state);
          break;
      }
    }
    if (next.size === 0) return false;
    states = closure(steps, next);
  }
  return states.has(steps.length);
}

/** Adds the states reachable without reading a character (past a `*`, `**\/` or final `**`). */
function closure(steps: Step[], states: Set<number>): Set<number> {
  const stack = [...states];
  while (stack.length > 0) {
    const state = stack.pop()!;
    const kind = steps[state]?.kind;
    if ((kind === "star" || kind === "folders" || kind === "rest") && !states.has(state + 1)) {
      states.add(state + 1);
      stack.push(state + 1);
    }
  }
  return states;
}
