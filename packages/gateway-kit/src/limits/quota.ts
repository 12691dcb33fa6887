import { GatewayError } from "../errors.js";
import { lstat, readdir } from "node:fs/promises";
import { join } from "node:path";
import { Transform, type Readable } from "node:stream";
import type { Middleware, ParameterizedContext } from "koa";
import * as z from "zod";
import { functionOption, parseOptions } from "../options.js";

/** The quotas checked at the door. */
export const QuotaName = z.enum(["uploadBytes", "repositoryBytes", "fileCount", "workspaceBytes"]);
export type QuotaName = z.infer<typeof QuotaName>;

const LABELS: Record<QuotaName, string> = {
  uploadBytes: "upload size",
  repositoryBytes: "repository size",
  fileCount: "file count",
  workspaceBytes: "workspace disk usage",
};

const unit = (quota: QuotaName, n: number) => (quota === "fileCount" ? `${n} files` : `${n} bytes`);

/**
 * A quota would be exceeded. An upload that is too large renders as 413 `upload_too_large`;
 * a repository, file count or workspace over its quota as 422 `quota_exceeded`. Both carry
 * `{ quota, limit, actual }` (`actual` is a lower bound when counting stopped early).
 */
export class QuotaExceededError extends GatewayError {
  readonly quota: QuotaName;
  constructor(quota: QuotaName, limit: number, actual: number) {
    const upload = quota === "uploadBytes";
    super(
      upload ? "upload_too_large" : "quota_exceeded",
      `The ${LABELS[quota]} quota is ${unit(quota, limit)}; this would need ${upload ? "" : "at least "}${unit(quota, actual)}`,
      { details: { quota, limit, actual } },
    );
    this.name = "QuotaExceededError";
    this.quota = quota;
  }
}

/**
 * Throws `QuotaExceededError` when `actual` is above `limit`; an `undefined` limit is no quota.
 *
 * @example
 * enforceQuota("fileCount", measured.files, 20_000);
 */
export function enforceQuota(quota: QuotaName, actual: number, limit: number | undefined): void {
  if (limit !== undefined && actual > limit) throw new QuotaExceededError(quota, limit, actual);
}

export interface DirectoryUsage {
  /** Sum of regular file sizes (or allocated blocks with `allocated`). */
  bytes: number;
  /** Regular files and symlinks (which are counted, never followed). */
  files: number;
  /** True when counting stopped early because a `stopAbove` bound was passed. */
  partial: boolean;
}

export interface MeasureOptions {
  /** Directory names skipped anywhere in the tree, e.g. `[".git"]` to measure a working tree only. */
  exclude?: string[];
  /** Count allocated disk blocks (`du`) instead of apparent file sizes. */
  allocated?: boolean;
  /** Stop walking once either count passes its bound (the quota is already exceeded). */
  stopAbove?: { bytes?: number; files?: number };
}

/**
 * Walks a directory without following symlinks and totals its files and bytes.
 *
 * @example
 * const usage = await measureDirectory(workspaceRoot, { allocated: true, stopAbove: { bytes: 5e9 } });
 */
export async function measureDirectory(dir: string, options: MeasureOptions = {}): Promise<DirectoryUsage> {
  const exclude = new Set(options.exclude ?? []);
  const total: DirectoryUsage = { bytes: 0, files: 0, partial: false };
  const over = () =>
    (options.stopAbove?.bytes !== undefined && total.bytes > options.stopAbove.bytes) ||
    (options.stopAbove?.files !== undefined && total.files > options.stopAbove.files);
  const stack = [dir];
  while (stack.length > 0) {
    const current = stack.pop()!;
    for (const entry of await readdir(current, { withFileTypes: true })) {
      const path = join(current, entry.name);
      if (entry.isDirectory()) {
        if (!exclude.has(entry.name)) stack.push(path);
      } else if (entry.isFile() || entry.isSymbolicLink()) {
        const stat = await lstat(path);
        total.files += 1;
        total.bytes += options.allocated ? stat.blocks * 512 : entry.isFile() ? stat.size : 0;
        if (over()) return { ...total, partial: true };
      }
    }
  }
  return total;
}

/**
 * Checks a checked-out or extracted repository against its size and file-count quotas,
 * stopping the walk as soon as one is passed.
 *
 * @example
 * await enforceDirectoryQuotas(extractedDir, { repositoryBytes: 500e6, fileCount: 50_000 });
 */
export async function enforceDirectoryQuotas(
  dir: string,
  limits: { repositoryBytes?: number; fileCount?: number },
  options: Omit<MeasureOptions, "stopAbove"> = {},
): Promise<DirectoryUsage> {
  const usage = await measureDirectory(dir, { ...options, stopAbove: { bytes: limits.repositoryBytes, files: limits.fileCount } });
  enforceQuota("repositoryBytes", usage.bytes, limits.repositoryBytes);
  enforceQuota("fileCount", usage.files, limits.fileCount);
  return usage;
}

/**
 * Passes a request body through while counting its bytes, and fails with a 413
 * `QuotaExceededError` as soon as it passes `limit` — for bodies sent without Content-Length.
 *
 * @example
 * await pipeline(meteredBody(ctx.req, 100 * 1024 * 1024), tarExtractor);
 */
export function meteredBody(source: Readable, limit: number): Readable {
  let seen = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      seen += chunk.length;
      if (seen > limit) {
        source.unpipe(meter);
        // Drop the rest so the client can read the 413 instead of a reset connection.
        source.resume();
        callback(new QuotaExceededError("uploadBytes", limit, seen));
        return;
      }
      callback(null, chunk);
    },
  });
  source.on("error", (error) => meter.destroy(error));
  return source.pipe(meter);
}

type Ctx = ParameterizedContext;
type Usage = Partial<Record<Exclude<QuotaName, "uploadBytes">, number>>;

const QuotaOptions = z
  .object({
    /** Largest request body in bytes; declared (Content-Length) and streamed bodies alike. */
    maxUploadBytes: z.number().int().min(0).optional(),
    /** Limits on what the request would leave behind; `usage` says how much that is. */
    limits: z
      .object({
        repositoryBytes: z.number().int().min(0).optional(),
        fileCount: z.number().int().min(0).optional(),
        workspaceBytes: z.number().int().min(0).optional(),
      })
      .strict()
      .default({}),
    /** What the caller uses (plus what this request adds), e.g. from `measureDirectory` or a cache. */
    usage: functionOption<(ctx: Ctx) => Usage | Promise<Usage>>().optional(),
  })
  .strict()
  .refine((o) => Object.keys(o.limits).length === 0 || o.usage !== undefined, { message: "limits need a usage function" });
export type QuotaOptions = z.input<typeof QuotaOptions>;

declare module "koa" {
  interface DefaultState {
    /** The request body metered against `maxUploadBytes`, attached when first read; read a streamed upload from here, not `ctx.req`. */
    upload?: Readable;
  }
}

/**
 * Checks resource quotas before a request does any work: a body over `maxUploadBytes` gets
 * 413 `upload_too_large` (at once from `Content-Length`, or while streaming through
 * `ctx.state.upload`), and a repository, file count or workspace over its limit gets 422
 * `quota_exceeded` naming the quota and the limit.
 *
 * @example
 * router.post("/v1/repos", authenticate({ service }), quota({
 *   maxUploadBytes: 200 * 1024 * 1024,
 *   limits: { workspaceBytes: 5 * 1024 ** 3 },
 *   usage: async (ctx) => ({ workspaceBytes: (await measureDirectory(userRoot(ctx), { allocated: true })).bytes }),
 * }), async (ctx) => { await pipeline(ctx.state.upload!, extractTo(dir)); });
 */
export function quota(input: QuotaOptions): Middleware {
  const options = parseOptions(QuotaOptions, input, "quota");
  return async (ctx, next) => {
    const max = options.maxUploadBytes;
    if (max !== undefined) {
      const declared = ctx.get("content-length");
      if (declared && Number(declared) > max) {
        ctx.req.resume();
        throw new QuotaExceededError("uploadBytes", max, Number(declared));
      }
      // Attached on first read: piping `ctx.req` eagerly would take the body away from a
      // parser that reads `ctx.req` itself.
      let metered: Readable | undefined;
      Object.defineProperty(ctx.state, "upload", {
        configurable: true,
        enumerable: false,
        get: () => (metered ??= meteredBody(ctx.req, max)),
      });
    }
    if (options.usage) {
      const usage = await options.usage(ctx);
      for (const name of ["repositoryBytes", "fileCount", "workspaceBytes"] as const) {
        const actual = usage[name];
        if (actual !== undefined) enforceQuota(name, actual, options.limits[name]);
      }
    }
    await next();
  };
}
