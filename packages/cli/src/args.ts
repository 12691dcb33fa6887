import { parseArgs, type ParseArgsConfig } from "node:util";
import { UsageError } from "./cli-error.js";

/** The flags of one command, as `parseArgs` takes them. */
export type Options = NonNullable<ParseArgsConfig["options"]>;
type Parsed<T extends Options> = ReturnType<typeof parseArgs<{ args: string[]; options: T; allowPositionals: true; strict: true }>>;

/**
 * `parseArgs` with the errors a user can act on: a value that starts with a dash (`--max-depth -1`,
 * `--validate "-x"`) is taken as the value rather than refused as ambiguous, and an unknown flag
 * names the closest known one. Every error is a one-line {@link UsageError} pointing at `help`.
 *
 * @example
 * const { values } = parseCommandArgs(["--max-dept", "2"], { "max-depth": { type: "string" } }, "run");
 * // throws UsageError: unknown option --max-dept (did you mean --max-depth?) (see keen help run)
 */
export function parseCommandArgs<T extends Options>(argv: string[], options: T, command: string, allowPositionals = true): Parsed<T> {
  const args = attachDashValues(argv, options);
  let parsed: Parsed<T>;
  try {
    parsed = parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (error) {
    const code = (error as { code?: string }).code;
    const message = (error as Error).message.split("\n")[0] ?? "";
    if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      const flag = /Unknown option '([^']+)'/.exec(message)?.[1] ?? message;
      const suggestion = closestOption(flag, options);
      throw new UsageError(`unknown option ${flag}${suggestion ? ` (did you mean ${suggestion}?)` : ""} (see keen help ${command})`);
    }
    if (code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" && /argument missing/.test(message)) {
      const flag = /Option '(?:-\w, )?(--[\w-]+)/.exec(message)?.[1];
      throw new UsageError(`${flag ?? "an option"} needs a value (argument missing) (see keen help ${command})`);
    }
    throw new UsageError(`${message} (see keen help ${command})`);
  }
  if (!allowPositionals && parsed.positionals.length) {
    throw new UsageError(`keen ${command} takes no arguments besides its options, got "${parsed.positionals[0]}" (see keen help ${command})`);
  }
  return parsed;
}

/**
 * Joins `--flag value` into `--flag=value` for string flags whose value starts with a dash but is
 * not itself a known flag, so `--max-depth -1` reaches the flag's own validation.
 */
function attachDashValues(argv: string[], options: Options): string[] {
  const out: string[] = [];
  const known = new Set(Object.keys(options).map((name) => `--${name}`));
  for (const option of Object.values(options)) if (option.short) known.add(`-${option.short}`);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      out.push(...argv.slice(i));
      break;
    }
    const name = arg.startsWith("--") && !arg.includes("=") ? arg.slice(2) : undefined;
    const next = argv[i + 1];
    if (name && options[name]?.type === "string" && next !== undefined && next.startsWith("-") && next !== "-" && !known.has(next.split("=")[0]!)) {
      out.push(`${arg}=${next}`);
      i += 1;
    } else {
      out.push(arg);
    }
  }
  return out;
}

/** The known flag nearest to `flag` by edit distance, if it is near enough to be a typo. */
export function closestOption(flag: string, options: Options): string | undefined {
  const typed = flag.replace(/^-+/, "").split("=")[0]!;
  let best: { name: string; distance: number } | undefined;
  for (const name of Object.keys(options)) {
    const distance = editDistance(typed, name);
    if (!best || distance < best.distance) best = { name, distance };
  }
  if (!best) return undefined;
  const allowed = Math.max(1, Math.floor(Math.max(typed.length, best.name.length) / 3));
  const prefix = typed.length >= 3 && best.name.startsWith(typed);
  return best.distance <= allowed || prefix ? `--${best.name}` : undefined;
}

/** Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`. */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}
