import { posix } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip } from "node:zlib";
import type { Middleware } from "koa";
import type * as TarStream from "tar-stream";
import type * as Yauzl from "yauzl";
import { loadOptional } from "../optional-dependency.js";
import { z } from "zod";
import { HttpError } from "../http-error.js";

/** Why an archive was refused. 413 codes are about size, 422 codes about content. */
export type ArchiveProblem =
  | "archive_too_large"
  | "archive_uncompressed_too_large"
  | "archive_entry_too_large"
  | "archive_too_many_entries"
  | "archive_bomb"
  | "archive_unsafe_path"
  | "archive_unsafe_link"
  | "archive_special_file"
  | "archive_unsupported"
  | "archive_corrupt";

const SIZE_PROBLEMS = new Set<ArchiveProblem>(["archive_too_large", "archive_uncompressed_too_large", "archive_entry_too_large"]);

/**
 * An upload that failed screening: 413 for the size limits, 422 for everything else.
 * `details.entry` names the offending entry when there is one.
 */
export class ArchiveRejectedError extends HttpError {
  readonly problem: ArchiveProblem;
  readonly entry: string | undefined;
  constructor(problem: ArchiveProblem, message: string, entry?: string) {
    super(SIZE_PROBLEMS.has(problem) ? 413 : 422, problem, message, entry === undefined ? {} : { entry });
    this.name = "ArchiveRejectedError";
    this.problem = problem;
    this.entry = entry;
  }
}

const Bytes = z.number().int().positive();

/** Limits for `screenArchive`; every one is enforced on bytes actually read, never on declared sizes. */
export const ArchiveLimits = z
  .object({
    /** Largest archive as uploaded. Default 100 MiB. */
    maxCompressedBytes: Bytes.default(100 * 1024 * 1024),
    /** Largest total of all entries once unpacked. Default 1 GiB. */
    maxUncompressedBytes: Bytes.default(1024 * 1024 * 1024),
    /** Largest single entry once unpacked. Default 256 MiB. */
    maxEntryBytes: Bytes.default(256 * 1024 * 1024),
    /** Most entries (files, directories, links). Default 100 000. */
    maxEntries: Bytes.default(100_000),
    /** Highest unpacked/packed ratio, for the whole archive and for each entry. Default 100. */
    maxRatio: z.number().positive().default(100),
    /** The ratio is only judged past this many unpacked bytes, so tiny compressible files pass. Default 4 MiB. */
    ratioFloorBytes: Bytes.default(4 * 1024 * 1024),
    /** Accept symbolic links that stay inside the archive. Default true; links pointing out are always refused. */
    allowSymlinks: z.boolean().default(true),
  })
  .strict();
export type ArchiveLimits = z.input<typeof ArchiveLimits>;
type Limits = z.output<typeof ArchiveLimits>;

/** What a screened archive holds. */
export interface ArchiveReport {
  format: "tar" | "tar.gz" | "zip";
  compressedBytes: number;
  uncompressedBytes: number;
  entries: number;
  files: number;
  directories: number;
  symlinks: number;
  hardlinks: number;
}

function parseLimits(input: ArchiveLimits): Limits {
  const parsed = ArchiveLimits.safeParse(input);
  if (!parsed.success) throw new TypeError(`Invalid archive limits: ${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

/** Checks an entry name and returns it relative and normalised (no `./`, no trailing `/`). */
function safeEntryPath(raw: string): string {
  const shown = raw.slice(0, 300);
  if (raw.length === 0) throw new ArchiveRejectedError("archive_unsafe_path", "An entry has an empty name", shown);
  if (raw.includes("\0")) throw new ArchiveRejectedError("archive_unsafe_path", `Entry name contains a NUL byte: ${JSON.stringify(shown)}`, shown);
  const name = raw.replace(/\\/g, "/");
  if (name.startsWith("/") || /^[A-Za-z]:/.test(name)) throw new ArchiveRejectedError("archive_unsafe_path", `Entry ${shown} has an absolute path`, shown);
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) throw new ArchiveRejectedError("archive_unsafe_path", `Entry ${shown} climbs out of the archive root with ..`, shown);
  return parts.join("/");
}

/** Tracks entries across the archive: link targets and paths that run through symlinks. */
class EntryChecker {
  private readonly symlinks = new Set<string>();
  /** Packed size of the whole archive, when known up front (zip), for a running whole-archive ratio. */
  archiveBytes: number | undefined;
  report: Omit<ArchiveReport, "format" | "compressedBytes">;
  constructor(private readonly limits: Limits) {
    this.report = { uncompressedBytes: 0, entries: 0, files: 0, directories: 0, symlinks: 0, hardlinks: 0 };
  }

  private throughSymlink(path: string): string | undefined {
    const parts = path.split("/");
    for (let i = 1; i < parts.length; i++) {
      const prefix = parts.slice(0, i).join("/");
      if (this.symlinks.has(prefix)) return prefix;
    }
    return undefined;
  }

  /** Counts and checks an entry; returns its normalised path. */
  begin(rawName: string): string {
    this.report.entries++;
    if (this.report.entries > this.limits.maxEntries) {
      throw new ArchiveRejectedError("archive_too_many_entries", `The archive has more than ${this.limits.maxEntries} entries`, rawName.slice(0, 300));
    }
    const path = safeEntryPath(rawName);
    const via = path === "" ? undefined : this.throughSymlink(path);
    if (via !== undefined) throw new ArchiveRejectedError("archive_unsafe_link", `Entry ${path} is written through the symlink ${via}`, path);
    return path;
  }

  symlink(path: string, target: string): void {
    if (!this.limits.allowSymlinks) throw new ArchiveRejectedError("archive_unsafe_link", `Entry ${path} is a symlink, and symlinks are not accepted`, path);
    const t = target.replace(/\\/g, "/");
    if (t === "" || t.includes("\0")) throw new ArchiveRejectedError("archive_unsafe_link", `Symlink ${path} has an empty or invalid target`, path);
    if (t.startsWith("/") || /^[A-Za-z]:/.test(t)) throw new ArchiveRejectedError("archive_unsafe_link", `Symlink ${path} points to the absolute path ${t.slice(0, 200)}`, path);
    const resolved = posix.normalize(posix.join(posix.dirname(path), t));
    if (resolved === ".." || resolved.startsWith("../")) throw new ArchiveRejectedError("archive_unsafe_link", `Symlink ${path} points outside the archive (${t.slice(0, 200)})`, path);
    this.symlinks.add(path);
    this.report.symlinks++;
  }

  hardlink(path: string, target: string): void {
    let resolved: string;
    try {
      resolved = safeEntryPath(target);
    } catch {
      throw new ArchiveRejectedError("archive_unsafe_link", `Hard link ${path} points outside the archive (${target.slice(0, 200)})`, path);
    }
    const via = this.throughSymlink(resolved) ?? (this.symlinks.has(resolved) ? resolved : undefined);
    if (via !== undefined) throw new ArchiveRejectedError("archive_unsafe_link", `Hard link ${path} points through the symlink ${via}`, path);
    this.report.hardlinks++;
  }

  /** Counts unpacked bytes of one entry as they stream; throws the moment a limit is crossed. */
  meter(path: string, packedSize: number | undefined): (chunk: number) => void {
    let entryBytes = 0;
    return (n) => {
      entryBytes += n;
      this.report.uncompressedBytes += n;
      if (entryBytes > this.limits.maxEntryBytes) throw new ArchiveRejectedError("archive_entry_too_large", `Entry ${path} unpacks to more than ${this.limits.maxEntryBytes} bytes`, path);
      if (this.report.uncompressedBytes > this.limits.maxUncompressedBytes) {
        throw new ArchiveRejectedError("archive_uncompressed_too_large", `The archive unpacks to more than ${this.limits.maxUncompressedBytes} bytes`, path);
      }
      const total = this.report.uncompressedBytes;
      if (this.archiveBytes !== undefined && total > this.limits.ratioFloorBytes && total > this.limits.maxRatio * Math.max(this.archiveBytes, 1)) {
        throw new ArchiveRejectedError("archive_bomb", `The archive expands more than ${this.limits.maxRatio}× (compression bomb)`, path);
      }
      if (packedSize !== undefined && entryBytes > this.limits.ratioFloorBytes && entryBytes > this.limits.maxRatio * Math.max(packedSize, 1)) {
        throw new ArchiveRejectedError("archive_bomb", `Entry ${path} expands more than ${this.limits.maxRatio}× (compression bomb)`, path);
      }
    };
  }
}

type Source = Buffer | Uint8Array | Readable | AsyncIterable<Uint8Array>;

/** Reads the first bytes (enough to tell the format) and returns them with an iterator for the rest. */
async function sniff(source: Source): Promise<{ head: Buffer; rest: AsyncIterator<Uint8Array> }> {
  const iterable: AsyncIterable<Uint8Array> = Buffer.isBuffer(source) || source instanceof Uint8Array ? Readable.from([Buffer.from(source)]) : (source as AsyncIterable<Uint8Array>);
  const rest = iterable[Symbol.asyncIterator]();
  const chunks: Buffer[] = [];
  let length = 0;
  while (length < 512) {
    const next = await rest.next();
    if (next.done) break;
    chunks.push(Buffer.from(next.value));
    length += next.value.length;
  }
  return { head: Buffer.concat(chunks), rest };
}

function formatOf(head: Buffer): ArchiveReport["format"] {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return "tar.gz";
  if (head.length >= 4 && head.readUInt32LE(0) === 0x04034b50) return "zip";
  if (head.length >= 4 && head.readUInt32LE(0) === 0x06054b50) return "zip"; // empty zip
  if (head.length >= 262 && head.subarray(257, 262).toString("latin1") === "ustar") return "tar";
  throw new ArchiveRejectedError("archive_unsupported", "The upload is not a .tar, .tar.gz or .zip archive");
}

async function* compressedBytes(head: Buffer, rest: AsyncIterator<Uint8Array>, limits: Limits, counter: { bytes: number }): AsyncGenerator<Buffer> {
  const take = (chunk: Buffer) => {
    counter.bytes += chunk.length;
    if (counter.bytes > limits.maxCompressedBytes) throw new ArchiveRejectedError("archive_too_large", `The upload is larger than ${limits.maxCompressedBytes} bytes`);
    return chunk;
  };
  try {
    if (head.length) yield take(head);
    for (;;) {
      const next = await rest.next();
      if (next.done) return;
      yield take(Buffer.from(next.value));
    }
  } finally {
    // Stops (and closes) the caller's stream when screening ends early.
    await rest.return?.();
  }
}

async function screenTar(head: Buffer, rest: AsyncIterator<Uint8Array>, gzipped: boolean, limits: Limits): Promise<ArchiveReport> {
  const counter = { bytes: 0 };
  const checker = new EntryChecker(limits);
  const tar = await loadOptional<typeof TarStream>("tar-stream");
  const extract = tar.extract();
  let unpacked = 0;
  // The whole-archive ratio: judged on the tar stream coming out of gunzip against the bytes fed in.
  const ratioGuard = async function* (source: AsyncIterable<Buffer>) {
    for await (const chunk of source) {
      unpacked += chunk.length;
      if (unpacked > limits.maxUncompressedBytes + 1024 * 1024) {
        throw new ArchiveRejectedError("archive_uncompressed_too_large", `The archive unpacks to more than ${limits.maxUncompressedBytes} bytes`);
      }
      if (unpacked > limits.ratioFloorBytes && unpacked > limits.maxRatio * counter.bytes) {
        throw new ArchiveRejectedError("archive_bomb", `The archive expands more than ${limits.maxRatio}× (compression bomb)`);
      }
      yield chunk;
    }
  };
  let failure: unknown;
  const piping = (
    gzipped
      ? pipeline(compressedBytes(head, rest, limits, counter), createGunzip(), ratioGuard, extract)
      : pipeline(compressedBytes(head, rest, limits, counter), extract)
  ).catch((error: unknown) => {
    failure ??= error;
  });
  try {
    for await (const entry of extract) {
      const { header } = entry;
      const path = checker.begin(header.name);
      switch (header.type) {
        case "file":
        case "contiguous-file":
        case null:
        case undefined:
          checker.report.files++;
          break;
        case "directory":
          checker.report.directories++;
          break;
        case "symlink":
          checker.symlink(path, header.linkname ?? "");
          break;
        case "link":
          checker.hardlink(path, header.linkname ?? "");
          break;
        case "character-device":
        case "block-device":
        case "fifo":
          throw new ArchiveRejectedError("archive_special_file", `Entry ${path} is a ${header.type}, which an upload may not contain`, path);
        default:
          throw new ArchiveRejectedError("archive_special_file", `Entry ${path} has the unsupported type ${String(header.type)}`, path);
      }
      // Files are metered as they stream; links and directories carry no data, but whatever
      // their header claims is drained through the same meter.
      const meter = checker.meter(path || header.name, undefined);
      for await (const chunk of entry) meter((chunk as Buffer).length);
    }
  } catch (error) {
    failure ??= error;
    extract.destroy();
  }
  await piping;
  if (failure !== undefined) throw asArchiveError(failure);
  return { format: gzipped ? "tar.gz" : "tar", compressedBytes: counter.bytes, ...checker.report };
}

function asArchiveError(error: unknown): ArchiveRejectedError {
  if (error instanceof ArchiveRejectedError) return error;
  const cause = error as { code?: string; message?: string };
  const message = cause?.message ?? String(error);
  if (cause?.code === "Z_DATA_ERROR" || cause?.code === "Z_BUF_ERROR") return new ArchiveRejectedError("archive_corrupt", `The gzip stream is corrupt: ${message}`);
  return new ArchiveRejectedError("archive_corrupt", `The archive is corrupt: ${message}`);
}

const S_IFMT = 0o170000;
const S_IFLNK = 0o120000;
const S_IFDIR = 0o040000;
const SPECIAL: Record<number, string> = { 0o020000: "character-device", 0o060000: "block-device", 0o010000: "fifo", 0o140000: "socket" };

async function screenZip(head: Buffer, rest: AsyncIterator<Uint8Array>, limits: Limits): Promise<ArchiveReport> {
  // A zip's directory is at its end, so it is read whole (within the upload cap) before any check.
  const counter = { bytes: 0 };
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of compressedBytes(head, rest, limits, counter)) chunks.push(chunk);
  } catch (error) {
    throw asArchiveError(error);
  }
  const buffer = Buffer.concat(chunks);
  const { default: yauzl } = await loadOptional<{ default: typeof Yauzl }>("yauzl");
  let zip: Yauzl.ZipFile;
  try {
    zip = await yauzl.fromBufferPromise(buffer, { lazyEntries: true, decodeStrings: false, validateEntrySizes: true, strictFileNames: false });
  } catch (error) {
    throw new ArchiveRejectedError("archive_corrupt", `The zip archive is corrupt: ${(error as Error).message}`);
  }
  if (zip.entryCount > limits.maxEntries) {
    zip.close();
    throw new ArchiveRejectedError("archive_too_many_entries", `The archive has ${zip.entryCount} entries (at most ${limits.maxEntries})`);
  }
  const checker = new EntryChecker(limits);
  checker.archiveBytes = counter.bytes;
  let current: string | undefined;
  try {
    for await (const entry of zip.eachEntry()) {
      const raw = yauzl.getFileNameLowLevel(entry.generalPurposeBitFlag, entry.fileNameRaw, entry.extraFields, false);
      current = raw;
      const path = checker.begin(raw);
      current = path;
      if (entry.isEncrypted()) throw new ArchiveRejectedError("archive_unsupported", `Entry ${path} is encrypted and cannot be screened`, path);
      if (entry.compressionMethod !== 0 && entry.compressionMethod !== 8) {
        throw new ArchiveRejectedError("archive_unsupported", `Entry ${path} uses compression method ${entry.compressionMethod} (only stored and deflate are accepted)`, path);
      }
      const madeOnUnix = entry.versionMadeBy >> 8 === 3;
      const mode = madeOnUnix ? (entry.externalFileAttributes >>> 16) & S_IFMT : 0;
      if (SPECIAL[mode]) throw new ArchiveRejectedError("archive_special_file", `Entry ${path} is a ${SPECIAL[mode]}, which an upload may not contain`, path);
      const isDir = raw.endsWith("/") || raw.endsWith("\\") || mode === S_IFDIR;
      if (isDir) {
        checker.report.directories++;
        continue;
      }
      const stream = await zip.openReadStreamPromise(entry);
      if (mode === S_IFLNK) {
        const target: Buffer[] = [];
        let size = 0;
        for await (const chunk of stream) {
          size += (chunk as Buffer).length;
          if (size > 4096) throw new ArchiveRejectedError("archive_unsafe_link", `Symlink ${path} has a target longer than 4096 bytes`, path);
          target.push(chunk as Buffer);
        }
        checker.symlink(path, Buffer.concat(target).toString("utf8"));
        continue;
      }
      checker.report.files++;
      const meter = checker.meter(path, entry.compressedSize);
      try {
        for await (const chunk of stream) meter((chunk as Buffer).length);
      } finally {
        stream.destroy();
      }
    }
  } catch (error) {
    if (error instanceof ArchiveRejectedError) throw error;
    // yauzl reports a declared size that the data does not match, bad CRCs and truncated data here.
    throw new ArchiveRejectedError("archive_corrupt", `Entry ${current ?? "?"} is corrupt: ${(error as Error).message}`, current);
  } finally {
    zip.close();
  }
  return { format: "zip", compressedBytes: counter.bytes, ...checker.report };
}

/**
 * Screens a repository upload (.tar, .tar.gz or .zip, told apart by their first bytes) without
 * writing anything to disk. It refuses absolute paths, `..`, symlinks and hard links that point
 * (or write through a symlink) outside the root, device files and fifos, and compression bombs,
 * counting the bytes it actually unpacks against the limits, never the sizes the archive
 * declares. Tarballs are checked as they stream; a zip is read into memory (within
 * `maxCompressedBytes`) because its directory is at the end.
 *
 * @example
 * try {
 *   const report = await screenArchive(fs.createReadStream(path), { maxUncompressedBytes: 512 * 1024 * 1024 });
 * } catch (error) {
 *   if (error instanceof ArchiveRejectedError) console.log(error.status, error.code, error.entry); // 422 archive_unsafe_link "src/evil"
 * }
 */
export async function screenArchive(source: Source, limits: ArchiveLimits = {}): Promise<ArchiveReport> {
  return screen(source, parseLimits(limits));
}

async function screen(source: Source, limits: Limits): Promise<ArchiveReport> {
  const { head, rest } = await sniff(source);
  const format = formatOf(head);
  if (format === "zip") return screenZip(head, rest, limits);
  return screenTar(head, rest, format === "tar.gz", limits);
}

/** The screened upload `screenUploads()` puts on `ctx.state.screenedUpload`. */
export interface ScreenedUpload {
  body: Buffer;
  report: ArchiveReport;
}

declare module "koa" {
  interface DefaultState {
    /** A screened archive upload, set by `screenUploads()`. */
    screenedUpload?: ScreenedUpload;
  }
}

/**
 * Reads a raw archive request body (`Content-Type` `application/gzip`, `application/x-tar`,
 * `application/zip` or `application/octet-stream`), screens it with `screenArchive`, and puts
 * the bytes and the report on `ctx.state.screenedUpload`. A `Content-Length` over the limit is
 * refused before reading; a body that grows past it is cut off at the limit. When `quota()` ran
 * first, the body is read from its metered `ctx.state.upload`, so both limits apply.
 *
 * @example
 * router.post("/projects/:id/repository", screenUploads({ maxCompressedBytes: 50 * 1024 * 1024 }), async (ctx) => {
 *   await unpackInto(workspace, ctx.state.screenedUpload!.body);
 * });
 */
export function screenUploads(limits: ArchiveLimits = {}): Middleware {
  const parsed = parseLimits(limits);
  return async (ctx, next) => {
    if (!ctx.is("application/gzip", "application/x-gzip", "application/x-tar", "application/zip", "application/octet-stream")) {
      throw new HttpError(415, "unsupported_media_type", "Upload a .tar, .tar.gz or .zip archive as the raw request body");
    }
    const declared = Number(ctx.get("content-length"));
    if (Number.isFinite(declared) && declared > parsed.maxCompressedBytes) {
      throw new ArchiveRejectedError("archive_too_large", `The upload is larger than ${parsed.maxCompressedBytes} bytes`);
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of ctx.state.upload ?? ctx.req) {
      size += (chunk as Buffer).length;
      if (size > parsed.maxCompressedBytes) throw new ArchiveRejectedError("archive_too_large", `The upload is larger than ${parsed.maxCompressedBytes} bytes`);
      chunks.push(chunk as Buffer);
    }
    const body = Buffer.concat(chunks);
    // The limits were checked when the middleware was created.
    const report = await screen(body, parsed);
    ctx.state.screenedUpload = { body, report };
    await next();
  };
}
