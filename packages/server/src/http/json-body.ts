import { HttpError } from "@keen/gateway-kit";
import type { IncomingMessage } from "node:http";
import type { Middleware } from "koa";

export interface JsonBodyOptions {
  /** Largest body in bytes, as sent; a larger one is 413 `payload_too_large`. */
  limit: number;
  /** Methods whose body is read (default POST, PUT, PATCH). */
  methods?: string[];
}

/** A lone UTF-16 surrogate: text no UTF-8 encoder can store as sent (it would become U+FFFD). */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

interface Visit {
  value: unknown;
  key: string | number | undefined;
  parent: Visit | undefined;
}

const pathOf = (visit: Visit): Array<string | number> => {
  const path: Array<string | number> = [];
  for (let at: Visit | undefined = visit; at?.key !== undefined; at = at.parent) path.unshift(at.key);
  return path;
};

/** The path of the first string (value or key) that PostgreSQL could not store as sent, if any. */
function unstorableText(value: unknown): { path: Array<string | number>; why: string } | undefined {
  const problem = (text: string) => (text.includes("\u0000") ? "contains a NUL character" : LONE_SURROGATE.test(text) ? "contains an unpaired surrogate (\\ud800-\\udfff)" : undefined);
  // An explicit stack with parent links (the path is built only for the answer): a deeply
  // nested body costs time linear in its size and never overflows the call stack.
  const stack: Visit[] = [{ value, key: undefined, parent: undefined }];
  while (stack.length > 0) {
    const visit = stack.pop()!;
    const current = visit.value;
    if (typeof current === "string") {
      const why = problem(current);
      if (why) return { path: pathOf(visit), why };
    } else if (Array.isArray(current)) {
      for (let i = current.length - 1; i >= 0; i--) stack.push({ value: current[i], key: i, parent: visit });
    } else if (current !== null && typeof current === "object") {
      for (const [key, item] of Object.entries(current)) {
        const child = { value: item, key, parent: visit };
        const why = problem(key);
        if (why) return { path: pathOf(child), why };
        stack.push(child);
      }
    }
  }
  return undefined;
}

/**
 * Reads a request body up to `limit` bytes. Past the limit it rejects with 413 and drains the
 * rest unread, so the client gets the answer instead of a reset connection.
 */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    const onData = (chunk: Buffer) => {
      if (failed) return;
      size += chunk.length;
      if (size > limit) {
        failed = true;
        chunks.length = 0;
        reject(new HttpError(413, "payload_too_large", `The body is larger than ${limit} bytes`));
        return;
      }
      chunks.push(chunk);
    };
    req.on("data", onData);
    req.once("end", () => {
      if (!failed) resolve(Buffer.concat(chunks));
    });
    req.once("error", (error) => {
      if (!failed) reject(error);
      failed = true;
    });
  });
}

/**
 * Reads a JSON request body strictly and puts it on `ctx.request.body`: the bytes must be valid
 * UTF-8 (a malformed sequence is refused, not replaced by U+FFFD), the text valid JSON, and no
 * string or key may hold a NUL or an unpaired surrogate — text PostgreSQL refuses (NUL) or that
 * would be stored altered. Each is a 400 naming the problem, so bad text never reaches the
 * database as a 500 or is kept changed. Bodies of other content types are left empty (`{}`) for
 * the route's validation to refuse; compressed bodies are 415.
 *
 * @example
 * router.post("/runs", jsonBody({ limit: 256 * 1024 }), validate({ body: CreateRunBody }), handler);
 */
export function jsonBody(options: JsonBodyOptions): Middleware {
  const methods = new Set(options.methods ?? ["POST", "PUT", "PATCH"]);
  return async (ctx, next) => {
    if (!methods.has(ctx.method) || !ctx.request.is("application/json", "+json")) {
      ctx.request.body = {};
      return next();
    }
    const encoding = (ctx.get("content-encoding") || "identity").toLowerCase();
    if (encoding !== "identity") throw new HttpError(415, "unsupported_media_type", `Content-Encoding ${encoding.slice(0, 40)} is not accepted; send the JSON body uncompressed`);
    const declared = Number(ctx.get("content-length") || 0);
    if (declared > options.limit) {
      ctx.req.resume();
      throw new HttpError(413, "payload_too_large", `The body is larger than ${options.limit} bytes`);
    }
    const raw = await readBody(ctx.req, options.limit);
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(raw);
    } catch {
      throw new HttpError(400, "invalid_request", "The body is not valid UTF-8");
    }
    let body: unknown;
    try {
      // An empty body is an empty object, as for a form without fields.
      body = text.trim() === "" ? {} : JSON.parse(text);
    } catch {
      throw new HttpError(400, "invalid_request", "The body is not valid JSON");
    }
    const bad = unstorableText(body);
    if (bad) {
      const where = bad.path.length > 0 ? `body.${bad.path.join(".")}` : "body";
      throw new HttpError(400, "invalid_request", `${where.slice(0, 200)} ${bad.why}`, { issues: [{ in: "body", path: bad.path, message: bad.why }] });
    }
    ctx.request.body = body;
    await next();
  };
}
