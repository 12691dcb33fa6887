import { StringDecoder } from "node:string_decoder";
import { Transform, type Readable } from "node:stream";
import type { Middleware, ParameterizedContext } from "koa";
import { ConfigError } from "../errors.js";
import {
  defaultMask,
  defaultSecretPatterns,
  defaultSensitiveKeys,
  redactSecrets,
  redactSecretsDeep,
  type RedactDeepOptions,
  type RedactOptions,
  type SecretPattern,
} from "../redact-secrets.js";

export {
  defaultSecretPatterns,
  defaultSensitiveKeys,
  redactSecrets,
  redactSecretsDeep,
  type RedactDeepOptions,
  type RedactOptions,
  type SecretPattern,
};

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
 *   ctx.body = await service.createApiKey(principal, body, { password: body.password });
 *   markOwnerSecrets(ctx, ["key"]);
 * });
 */
export function markOwnerSecrets(ctx: ParameterizedContext, fields: readonly string[]): void {
  if (!Array.isArray(fields) || fields.some((f) => typeof f !== "string")) throw new ConfigError("markOwnerSecrets: fields must be an array of field names");
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
  if (typeof inner !== "function") throw new ConfigError("ownerSecrets: wrap a middleware, e.g. router.routes()");
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
    if (!(pattern instanceof RegExp) || !pattern.global) throw new ConfigError(`redactResponses: pattern ${kind} must be a global RegExp`);
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
