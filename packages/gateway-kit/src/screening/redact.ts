import { Transform, type Readable } from "node:stream";
import type { Middleware } from "koa";

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
  { kind: "keen_api_key", pattern: /\b(?<keep>keen_[a-z2-7]{12}_)(?<secret>[A-Za-z0-9_-]{43})(?![A-Za-z0-9_-])/g },
  { kind: "anthropic_key", pattern: /\bsk-ant-[a-z]+\d*-[A-Za-z0-9_-]{20,}/g },
  { kind: "openai_key", pattern: /\bsk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{20,}|\bsk-[A-Za-z0-9]{32,}(?![A-Za-z0-9_-])/g },
  { kind: "github_token", pattern: /\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b/g },
  { kind: "stripe_key", pattern: /\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b|\bwhsec_[A-Za-z0-9+/=]{16,}/g },
  { kind: "aws_access_key_id", pattern: /\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|ABIA|ACCA)[A-Z0-9]{16}\b/g },
  {
    kind: "aws_secret_access_key",
    pattern: /(?<keep>\baws_?secret_?access_?key["']?\s*[:=]\s*["']?)(?<secret>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])/gi,
  },
  { kind: "slack_token", pattern: /\bxox[abposr]-[A-Za-z0-9-]{10,}/g },
  { kind: "google_api_key", pattern: /\bAIza[0-9A-Za-z_-]{35}\b/g },
  { kind: "jwt", pattern: /\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}/g },
  { kind: "bearer_token", pattern: /(?<keep>\b(?:Bearer|Basic|Token)\s+)(?<secret>[A-Za-z0-9._~+/-]{16,}=*)/g },
  // scheme://user:password@host — the password only; `postgres://postgres@host` has none.
  { kind: "url_password", pattern: /(?<keep>\b[a-z][a-z0-9+.-]*:\/\/[^\s:/@'"<>]+:)(?<secret>[^\s@/'"<>]+)(?=@)/gi },
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

const defaultMask = (kind: string) => `[REDACTED:${kind}]`;

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
  let out = text;
  for (const { kind, pattern } of patterns) {
    if (!pattern.global) throw new TypeError(`Secret pattern ${kind} must have the g flag`);
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
  const ancestors = new Set<object>();
  const walk = (v: unknown, key: string | undefined): unknown => {
    if (typeof v === "string") return key !== undefined && v !== "" && isSensitive(key) ? mask("sensitive_field") : redactSecrets(v, options);
    if (v === null || typeof v !== "object") return v;
    if (v instanceof Date) return v;
    if (typeof (v as { toJSON?: unknown }).toJSON === "function") return walk((v as { toJSON(): unknown }).toJSON(), key);
    // Only the objects on the current path count as a cycle; shared references are copied twice.
    if (ancestors.has(v)) return undefined;
    ancestors.add(v);
    let out: unknown;
    if (Array.isArray(v)) out = v.map((item) => walk(item, undefined));
    else {
      const copy: Record<string, unknown> = {};
      for (const [k, item] of Object.entries(v)) copy[k] = walk(item, k);
      out = copy;
    }
    ancestors.delete(v);
    return out;
  };
  return walk(value, undefined) as T;
}

/**
 * A stream transform that redacts text line by line, for SSE and NDJSON bodies. A line is held
 * until its newline arrives, so a secret split across chunks is still caught; a line longer
 * than `maxLineBytes` is flushed (redacted) in pieces.
 *
 * @example
 * ctx.body = eventStream.pipe(redactStream());
 */
export function redactStream(options: RedactOptions & { maxLineBytes?: number } = {}): Transform {
  const maxLine = options.maxLineBytes ?? 1024 * 1024;
  let pending = "";
  return new Transform({
    transform(chunk: Buffer | string, _encoding, callback) {
      pending += typeof chunk === "string" ? chunk : chunk.toString("utf8");
      const cut = pending.lastIndexOf("\n");
      if (cut >= 0) {
        this.push(redactSecrets(pending.slice(0, cut + 1), options));
        pending = pending.slice(cut + 1);
      }
      if (pending.length > maxLine) {
        this.push(redactSecrets(pending, options));
        pending = "";
      }
      callback();
    },
    flush(callback) {
      if (pending) this.push(redactSecrets(pending, options));
      callback();
    },
  });
}

function isReadable(body: unknown): body is Readable {
  return typeof (body as Readable | null)?.pipe === "function" && typeof (body as Readable).on === "function";
}

/**
 * Masks secrets in everything the routes below it send: JSON bodies (deep), text bodies, and
 * streamed bodies such as SSE event streams (line by line). Binary bodies (Buffers, non-text
 * streams) pass untouched. Errors thrown below it have their message and details masked before
 * `errorHandler()` renders them.
 *
 * @example
 * app.use(errorHandler());
 * app.use(redactResponses());
 * app.use(router.routes());
 */
export function redactResponses(options: RedactDeepOptions = {}): Middleware {
  for (const { kind, pattern } of options.patterns ?? []) {
    if (!(pattern instanceof RegExp) || !pattern.global) throw new TypeError(`redactResponses: pattern ${kind} must be a global RegExp`);
  }
  return async (ctx, next) => {
    try {
      await next();
    } catch (error) {
      // Error messages are rendered by errorHandler() further out: mask them on the way past.
      if (error instanceof Error) {
        error.message = redactSecrets(error.message, options);
        const details = (error as { details?: unknown }).details;
        if (details && typeof details === "object") Object.assign(error, { details: redactSecretsDeep(details, options) });
      }
      throw error;
    }
    const body = ctx.body;
    if (body === null || body === undefined || Buffer.isBuffer(body)) return;
    if (typeof body === "string") {
      ctx.body = redactSecrets(body, options);
    } else if (isReadable(body)) {
      const type = ctx.response.type;
      if (type === "" || /^text\/|json|ndjson|event-stream/.test(type)) {
        const filtered = body.pipe(redactStream(options));
        body.on("error", (error) => filtered.destroy(error));
        ctx.body = filtered;
        if (type) ctx.type = type;
      }
    } else if (typeof body === "object") {
      ctx.body = redactSecretsDeep(body, options);
    }
  };
}
