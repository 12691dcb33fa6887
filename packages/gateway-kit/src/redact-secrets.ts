import { ConfigError } from "./errors.js";

/**
 * Secret masking shared by every module that stores or shows text a secret may hide in (audit
 * details, responses, logs). It sits outside the feature folders so any of them can use it.
 */

/** One kind of secret the redactor recognises. */
export interface SecretPattern {
  /** Shown in the mask, e.g. `[REDACTED:github_token]`. */
  readonly kind: string;
  /** Must be global (`g`). Named group `secret`, when present, is the only part masked. */
  readonly pattern: RegExp;
}

/**
 * The secrets masked by default. Each pattern keys on a vendor prefix or a structural marker
 * (`-----BEGIN`, `user:pass@`, `Bearer `), so plain words and hex digests (git SHAs, SHA-256
 * sums) are left alone.
 */
export const defaultSecretPatterns: readonly SecretPattern[] = [
  { kind: "private_key", pattern: /-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END \1PRIVATE KEY(?: BLOCK)?-----|$)/g },
  // Prefixes are matched after any non-alphanumeric character, `_` included: `key_sk-ant-…` is a key too.
  { kind: "keen_api_key", pattern: /(?<![A-Za-z0-9])(?<keep>keen_[a-z2-7]{12}_)(?<secret>[A-Za-z0-9_-]{43})(?![A-Za-z0-9_-])/g },
  { kind: "anthropic_key", pattern: /(?<![A-Za-z0-9])sk-ant-[a-z]{1,20}\d{0,4}-[A-Za-z0-9_-]{20,}/g },
  { kind: "openai_key", pattern: /(?<![A-Za-z0-9])sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{20,}|(?<![A-Za-z0-9])sk-[A-Za-z0-9]{32,}(?![A-Za-z0-9_-])/g },
  { kind: "github_token", pattern: /(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})(?![A-Za-z0-9])/g },
  { kind: "stripe_key", pattern: /(?<![A-Za-z0-9])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}(?![A-Za-z0-9])|(?<![A-Za-z0-9])whsec_[A-Za-z0-9+/=]{16,}/g },
  { kind: "aws_access_key_id", pattern: /(?<![A-Za-z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])/g },
  {
    kind: "aws_secret_access_key",
    pattern: /(?<keep>\baws_?secret_?access_?key["']?\s{0,10}[:=]\s{0,10}["']?)(?<secret>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])/gi,
  },
  { kind: "slack_token", pattern: /(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,}/g },
  { kind: "google_api_key", pattern: /(?<![A-Za-z0-9])AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])/g },
  { kind: "jwt", pattern: /(?<![A-Za-z0-9])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}/g },
  // `Bearer`/`Basic` in any case (headers are case-insensitive, logs often lower-case them); `Token` capitalised only, as prose says "token" a lot.
  { kind: "bearer_token", pattern: /(?<keep>(?<![A-Za-z0-9])(?:[Bb][Ee][Aa][Rr][Ee][Rr]|[Bb][Aa][Ss][Ii][Cc]|Token)[ \t]{1,10})(?<secret>[A-Za-z0-9._~+/-]{16,}=*)/g },
  // scheme://user:password@host — the password only; `postgres://postgres@host` has none.
  { kind: "url_password", pattern: /(?<keep>(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{0,30}:\/\/[^\s:/@'"<>]{1,256}:)(?<secret>[^\s@/'"<>]{1,256})(?=@)/gi },
  // ?access_token=…, &api_key=…, ;password=… in URLs and query strings.
  {
    kind: "url_parameter",
    pattern: /(?<keep>[?&;](?:[A-Za-z0-9_.-]{0,40}?(?:token|secret|password|passwd|api[_-]?key|apikey|access[_-]?key|signature|credentials?))=)(?<secret>[^&#\s"'<>]{4,})/gi,
  },
];

/**
 * Keys whose string values `redactSecretsDeep` masks whole, whatever they look like. A key matches
 * when, ignoring case, `-` and `_`, it ends with one of these: `X-Api-Key`, `client_secret`,
 * `refreshToken` and `DB_PASSWORD` all do.
 */
export const defaultSensitiveKeys: readonly string[] = ["password", "passwd", "secret", "token", "api_key", "authorization", "cookie", "private_key", "credentials"];

export interface RedactOptions {
  /** Patterns to apply. Default `defaultSecretPatterns`. */
  patterns?: readonly SecretPattern[];
  /** Mask text for a kind. Default `[REDACTED:<kind>]`. */
  mask?: (kind: string) => string;
}

/** The mask used when none is given: `[REDACTED:<kind>]`. */
export const defaultMask = (kind: string) => `[REDACTED:${kind}]`;

/**
 * Masks secrets in text: Anthropic, OpenAI, GitHub, Stripe, AWS, Slack and Google keys, keen API
 * keys (the `keen_<prefix>_` part stays, so a key can still be identified), JWTs, bearer tokens,
 * PEM private keys and passwords in URLs.
 *
 * @example
 * redactSecrets("git clone https://bob:hunter2@example.com/r.git");
 * // "git clone https://bob:[REDACTED:url_password]@example.com/r.git"
 */
export function redactSecrets(text: string, options: RedactOptions = {}): string {
  const patterns = options.patterns ?? defaultSecretPatterns;
  const mask = options.mask ?? defaultMask;
  const plain = applyPatterns(text, patterns, mask);
  // A key written percent-encoded (`sk%2Dant%2D…`, `ghp%5F…`) is found in its decoded form; the
  // encoded run holding it is replaced by its decoded, redacted form.
  if (!plain.includes("%")) return plain;
  return plain.replace(PERCENT_RUN, (run) => {
    if (!/%[0-9A-Fa-f]{2}/.test(run)) return run;
    const decoded = percentDecode(run);
    const redacted = applyPatterns(decoded, patterns, mask);
    return redacted === decoded ? run : redacted;
  });
}

/** A run of URL characters: where a percent-encoded key would sit. Bounded, so each run is judged once. */
const PERCENT_RUN = /(?<![A-Za-z0-9%._~+/=-])[A-Za-z0-9%._~+/=-]{1,4096}/g;

function percentDecode(run: string): string {
  try {
    return decodeURIComponent(run.replace(/\+/g, " "));
  } catch {
    return run.replace(/%([0-9A-Fa-f]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
  }
}

function applyPatterns(text: string, patterns: readonly SecretPattern[], mask: (kind: string) => string): string {
  let out = text;
  for (const { kind, pattern } of patterns) {
    if (!pattern.global) throw new ConfigError(`Secret pattern ${kind} must have the g flag`);
    pattern.lastIndex = 0;
    out = out.replace(pattern, (...args) => {
      const groups = args.at(-1) as Record<string, string | undefined> | string;
      if (typeof groups === "object" && groups?.secret !== undefined) return `${groups.keep ?? ""}${mask(kind)}`;
      return mask(kind);
    });
  }
  return out;
}

export interface RedactDeepOptions extends RedactOptions {
  /** Key endings (case-insensitive, `-`/`_` ignored) whose string values are masked whole. Default `defaultSensitiveKeys`. */
  sensitiveKeys?: readonly string[];
}

const keyForm = (key: string) => key.toLowerCase().replace(/[-_]/g, "");

/**
 * Returns a copy of a JSON-like value with every string passed through `redactSecrets` and
 * the values of sensitive keys (`password`, `authorization`, …) masked whole. Keys themselves,
 * numbers and booleans are kept; the input is not modified. A reference back to an enclosing
 * object (a cycle) becomes `undefined`; shared, non-cyclic references are copied like JSON would.
 *
 * @example
 * redactSecretsDeep({ type: "tool.completed", output: "token ghp_...", headers: { authorization: "x" } });
 * // { type: "tool.completed", output: "token [REDACTED:github_token]", headers: { authorization: "[REDACTED:sensitive_field]" } }
 */
export function redactSecretsDeep<T>(value: T, options: RedactDeepOptions = {}): T {
  const endings = (options.sensitiveKeys ?? defaultSensitiveKeys).map(keyForm);
  const isSensitive = (key: string) => {
    const form = keyForm(key);
    return endings.some((ending) => form.endsWith(ending));
  };
  const mask = options.mask ?? defaultMask;
  const leaf = (v: unknown, key: string | undefined): unknown => {
    if (typeof v === "string") return key !== undefined && v !== "" && isSensitive(key) ? mask("sensitive_field") : redactSecrets(v, options);
    return v;
  };
  const unwrap = (v: unknown): unknown => {
    // toJSON() may return another object with a toJSON(); a few steps are plenty for real values.
    for (let step = 0; step < 8 && v !== null && typeof v === "object" && !(v instanceof Date) && typeof (v as { toJSON?: unknown }).toJSON === "function"; step++) {
      v = (v as { toJSON(): unknown }).toJSON();
    }
    return v;
  };
  const isContainer = (v: unknown): v is object => v !== null && typeof v === "object" && !(v instanceof Date);

  // Walked with an explicit stack, not recursion: a body nested tens of thousands of levels deep
  // is copied like any other instead of overflowing the call stack.
  interface Frame {
    source: object;
    out: unknown[] | Record<string, unknown>;
    entries: Array<[string | undefined, unknown]>;
    next: number;
  }
  const ancestors = new Set<object>();
  const stack: Frame[] = [];
  const open = (source: object): Frame["out"] => {
    ancestors.add(source);
    const isArray = Array.isArray(source);
    const out: Frame["out"] = isArray ? [] : {};
    const entries: Frame["entries"] = isArray ? (source as unknown[]).map((item) => [undefined, item]) : Object.entries(source);
    stack.push({ source, out, entries, next: 0 });
    return out;
  };
  const root = unwrap(value);
  if (!isContainer(root)) return leaf(root, undefined) as T;
  const result = open(root);
  while (stack.length > 0) {
    const frame = stack[stack.length - 1]!;
    if (frame.next >= frame.entries.length) {
      ancestors.delete(frame.source);
      stack.pop();
      continue;
    }
    const [key, raw] = frame.entries[frame.next++]!;
    const item = unwrap(raw);
    // Only the objects on the current path count as a cycle; shared references are copied twice.
    const copied = isContainer(item) ? (ancestors.has(item) ? undefined : open(item)) : leaf(item, key);
    if (Array.isArray(frame.out)) frame.out.push(copied);
    else frame.out[key!] = copied;
  }
  return result as T;
}
