import { StringDecoder } from "node:string_decoder";
import { Transform, type Readable } from "node:stream";
import type { Middleware, ParameterizedContext } from "koa";

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

const BEGIN_KEY = /-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY(?: BLOCK)?-----/;
const END_KEY = /-----END ((?:[A-Z0-9]+ )*)PRIVATE KEY(?: BLOCK)?-----/;

export interface RedactStreamOptions extends RedactDeepOptions {
  /** A line longer than this is passed on (redacted) in pieces. Default 1 MiB. */
  maxLineBytes?: number;
  /** Once a private key has begun, how much is swallowed while waiting for its END line. Default 64 KiB. */
  maxKeyBytes?: number;
  /**
   * Treat each line as JSON (NDJSON) or an SSE `data:` line holding JSON, and mask sensitive keys
   * in it as `redactSecretsDeep` does. Lines that are not JSON get plain text redaction.
   */
  jsonLines?: boolean;
}

/** Redacts one complete line, as JSON when asked and possible. */
function redactLine(line: string, options: RedactStreamOptions): string {
  if (!options.jsonLines) return redactSecrets(line, options);
  const body = /^(data: ?)?([\s\S]*?)(\r?\n)?$/.exec(line)!;
  const payload = body[2]!;
  const first = payload.trimStart()[0];
  if (first === "{" || first === "[") {
    try {
      return `${body[1] ?? ""}${JSON.stringify(redactSecretsDeep(JSON.parse(payload), options))}${body[3] ?? ""}`;
    } catch {
      // Not JSON after all: plain text below.
    }
  }
  return redactSecrets(line, options);
}

/** Where to cut an over-long line: after the last quote, comma or brace, so a secret is not split. */
function cutPoint(text: string, limit: number): number {
  for (let i = limit - 1; i > limit - 4096 && i > 0; i--) {
    const c = text[i];
    if (c === '"' || c === "," || c === "}" || c === "{" || c === ";" || c === "\t") return i + 1;
  }
  return limit;
}

/**
 * A stream transform that redacts text line by line, for SSE and NDJSON bodies. Bytes are decoded
 * with one UTF-8 decoder for the whole stream, so a character split across chunks stays whole.
 * A line is held until its newline arrives, so a secret split across chunks is still caught; a
 * line longer than `maxLineBytes` is flushed (redacted) in pieces. A private key spans lines: from
 * its BEGIN line everything is replaced by one mask until its END line (or `maxKeyBytes`), so a
 * PEM key streamed one line per chunk leaks none of its lines.
 *
 * @example
 * ctx.body = eventStream.pipe(redactStream({ jsonLines: true }));
 */
export function redactStream(options: RedactStreamOptions = {}): Transform {
  const maxLine = options.maxLineBytes ?? 1024 * 1024;
  const maxKey = options.maxKeyBytes ?? 64 * 1024;
  const mask = options.mask ?? defaultMask;
  const decoder = new StringDecoder("utf8");
  let pending = "";
  let inKey = false;
  let swallowed = 0;

  const redactLines = (text: string): string => {
    let out = "";
    let rest = text;
    while (rest.length > 0) {
      const newline = rest.indexOf("\n");
      let line = newline >= 0 ? rest.slice(0, newline + 1) : rest;
      rest = newline >= 0 ? rest.slice(newline + 1) : "";
      if (inKey) {
        const end = END_KEY.exec(line);
        if (!end) {
          swallowed += line.length;
          if (swallowed > maxKey) inKey = false;
          continue;
        }
        inKey = false;
        line = line.slice(end.index + end[0].length);
        out += redactSecrets(line, options);
        continue;
      }
      const begin = BEGIN_KEY.exec(line);
      if (begin && !END_KEY.test(line.slice(begin.index))) {
        out += redactSecrets(line.slice(0, begin.index), options) + mask("private_key");
        inKey = true;
        swallowed = 0;
        continue;
      }
      out += redactLine(line, options);
    }
    return out;
  };

  return new Transform({
    transform(chunk: Buffer | string, _encoding, callback) {
      try {
        pending += typeof chunk === "string" ? chunk : decoder.write(chunk);
        const cut = pending.lastIndexOf("\n");
        if (cut >= 0) {
          const out = redactLines(pending.slice(0, cut + 1));
          pending = pending.slice(cut + 1);
          if (out) this.push(out);
        }
        while (pending.length > maxLine) {
          const at = cutPoint(pending, maxLine);
          const out = inKey ? "" : redactSecrets(pending.slice(0, at), options);
          if (inKey) swallowed += at;
          if (inKey && swallowed > maxKey) inKey = false;
          pending = pending.slice(at);
          if (out) this.push(out);
        }
        callback();
      } catch (error) {
        callback(error as Error);
      }
    },
    flush(callback) {
      try {
        pending += decoder.end();
        const out = pending ? redactLines(pending) : "";
        pending = "";
        if (out) this.push(out);
        callback();
      } catch (error) {
        callback(error as Error);
      }
    },
  });
}

function isReadable(body: unknown): body is Readable {
  return typeof (body as Readable | null)?.pipe === "function" && typeof (body as Readable).on === "function";
}

declare module "koa" {
  interface DefaultState {
    /**
     * Top-level fields of this response's JSON body that hold secrets the API deliberately
     * returns to their owner (a new access token, an API key at creation). Set with
     * `markOwnerSecrets()` or `ownerSecrets()`; `redactResponses()` leaves exactly these fields alone.
     */
    ownerSecrets?: readonly string[];
  }
}

/**
 * The fields gateway-kit's own auth routes return to their owner: tokens from signup, login,
 * MFA and refresh, an API key at creation, a TOTP secret and its `otpauth://` URI at enrolment,
 * recovery codes.
 */
export const authOwnerSecretFields: readonly string[] = ["accessToken", "refreshToken", "challengeToken", "key", "secret", "otpauthUri", "recoveryCodes"];

/**
 * Marks top-level fields of the current response as secrets returned to their owner on purpose,
 * so `redactResponses()` passes them. Call it in the route that creates the secret; the mark
 * counts only for a successful (2xx) JSON object body of this one request.
 *
 * @example
 * router.post("/auth/api-keys", async (ctx) => {
 *   ctx.body = await service.createApiKey(principal, body);
 *   markOwnerSecrets(ctx, ["key"]);
 * });
 */
export function markOwnerSecrets(ctx: ParameterizedContext, fields: readonly string[]): void {
  if (!Array.isArray(fields) || fields.some((f) => typeof f !== "string")) throw new TypeError("markOwnerSecrets: fields must be an array of field names");
  ctx.state.ownerSecrets = [...fields];
}

/**
 * Wraps middleware (typically a router's `routes()`) whose responses return secrets to their
 * owner: while it handles a request the fields are marked; when it passes the request on
 * (`next()`, no route matched) the mark is withdrawn, so routes further in are redacted as usual.
 *
 * @example
 * app.use(redactResponses());
 * app.use(ownerSecrets(authRouter({ service, prefix: "/auth" }).routes()));   // tokens and new keys pass
 * app.use(api.routes());                                                       // everything else is masked
 */
// `any`: a router's routes() carries its own context type.
export function ownerSecrets(inner: Middleware<any, any>, fields: readonly string[] = authOwnerSecretFields): Middleware {
  if (typeof inner !== "function") throw new TypeError("ownerSecrets: wrap a middleware, e.g. router.routes()");
  const marked = [...fields];
  return async (ctx, next) => {
    const before = ctx.state.ownerSecrets;
    ctx.state.ownerSecrets = marked;
    await inner(ctx, async () => {
      ctx.state.ownerSecrets = before;
      await next();
    });
  };
}

const TEXTUAL = /^text\/|json|ndjson|event-stream/;
const STRUCTURED_STREAM = /ndjson|json-seq|jsonl|event-stream|application\/json/;

/**
 * Masks secrets in everything the routes below it send: JSON bodies (deep, also when sent as a
 * string or Buffer with a JSON type), text bodies, and streamed bodies such as SSE event streams
 * and NDJSON (line by line, with sensitive keys masked in each JSON line). Binary bodies pass
 * untouched. Errors thrown below it have their message and details masked before
 * `errorHandler()` renders them. Fields marked with `markOwnerSecrets()`/`ownerSecrets()` on a
 * successful JSON response pass as they are.
 *
 * @example
 * app.use(errorHandler());
 * app.use(redactResponses());
 * app.use(ownerSecrets(auth.routes()));
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
    if (body === null || body === undefined) return;
    const type = ctx.response.type;
    const isJson = /json/.test(type) && !/ndjson|jsonl|json-seq/.test(type);
    if (Buffer.isBuffer(body) || typeof body === "string") {
      if (Buffer.isBuffer(body) && !TEXTUAL.test(type)) return;
      const text = typeof body === "string" ? body : body.toString("utf8");
      let out: string | undefined;
      if (isJson) {
        try {
          out = JSON.stringify(redactSecretsDeep(JSON.parse(text), options));
        } catch {
          // Not JSON after all: plain text below.
        }
      } else if (/ndjson|jsonl|json-seq/.test(type)) {
        out = text.split(/(?<=\n)/).map((line) => redactLine(line, { ...options, jsonLines: true })).join("");
      }
      out ??= redactSecrets(text, options);
      ctx.body = typeof body === "string" ? out : Buffer.from(out, "utf8");
      if (type) ctx.type = type;
    } else if (isReadable(body)) {
      if (type === "" || TEXTUAL.test(type)) {
        const filtered = body.pipe(redactStream({ ...options, jsonLines: STRUCTURED_STREAM.test(type) }));
        body.on("error", (error) => filtered.destroy(error));
        ctx.body = filtered;
        if (type) ctx.type = type;
      }
    } else if (typeof body === "object") {
      const owned = ctx.status >= 200 && ctx.status < 300 && !Array.isArray(body) ? (ctx.state.ownerSecrets ?? []) : [];
      const redacted = redactSecretsDeep(body, options) as Record<string, unknown>;
      for (const field of owned) {
        if (Object.prototype.hasOwnProperty.call(body, field)) redacted[field] = (body as Record<string, unknown>)[field];
      }
      ctx.body = redacted;
    }
  };
}
