import { GatewayError } from "../errors.js";
import { posix } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip } from "node:zlib";
import type { Middleware } from "koa";
import type * as TarStream from "tar-stream";
import type * as Yauzl from "yauzl";
import { loadOptional } from "../optional-dependency.js";
import * as z from "zod";
import { HttpError } from "../http-error.js";
import { parseOptions } from "../options.js";

/** Why an archive was refused. 413 codes are about size, 422 codes about content. */
/** Every reason an archive upload is refused; each is the `code` of its `ArchiveRejectedError`. */
export const ARCHIVE_PROBLEMS = [
  "archive_too_large",
  "archive_uncompressed_too_large",
  "archive_entry_too_large",
  "archive_too_many_entries",
  "archive_bomb",
  "archive_unsafe_path",
  "archive_unsafe_link",
  "archive_special_file",
  "archive_unsupported",
  "archive_corrupt",
] as const;
export type ArchiveProblem = (typeof ARCHIVE_PROBLEMS)[number];

/**
 * An upload that failed screening; its `code` is the problem. At HTTP: 413 for the size limits, 422 for everything else.
 * `details.entry` names the offending entry when there is one.
 */
export class ArchiveRejectedError extends GatewayError {
  readonly problem: ArchiveProblem;
  readonly entry: string | undefined;
  constructor(problem: ArchiveProblem, message: string, entry?: string) {
    // Names come from the archive: terminal escapes and bidi overrides are shown as \u{…}.
    entry = entry === undefined ? undefined : printable(entry);
    message = printable(message);
    super(problem, message, { details: entry === undefined ? {} : { entry } });
    this.name = "ArchiveRejectedError";
    this.problem = problem;
    this.entry = entry;
  }
}

/** Control characters (C0, DEL, C1) and bidirectional overrides as visible `\u{…}` escapes. */
function printable(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);
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
  return parseOptions(ArchiveLimits, input, "archive limits");
}

/** Checks an entry name and returns it relative and normalised (no `./`, no trailing `/`). */
function safeEntryPath(raw: string): string {
  const shown = raw.slice(0, 300);
  if (raw.length === 0) throw new ArchiveRejectedError("archive_unsafe_path", "An entry has an empty name", shown);
  if (raw.includes("\0")) throw new ArchiveRejectedError("archive_unsafe_path", `Entry name contains a NUL byte: ${JSON.stringify(shown)}`, shown);
  // Longer than PATH_MAX: no extractor can create it, and a megabyte-long pax name only costs us.
  if (raw.length > 4096) throw new ArchiveRejectedError("archive_unsafe_path", `Entry name is longer than 4096 characters: ${shown}…`, shown);
  const name = raw.replace(/\\/g, "/");
  if (name.startsWith("/") || /^[A-Za-z]:/.test(name)) throw new ArchiveRejectedError("archive_unsafe_path", `Entry ${shown} has an absolute path`, shown);
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) throw new ArchiveRejectedError("archive_unsafe_path", `Entry ${shown} climbs out of the archive root with ..`, shown);
  return parts.join("/");
}

/** The form two names take when compared: case and Unicode form folded, as on case-insensitive disks. */
const fold = (path: string) => path.normalize("NFC").toLowerCase();

/**
 * Tracks entries across the archive: which paths are symlinks, which are (or sit under) other
 * entries, and whether a new link could lead out of the root.
 *
 * A link is judged by the only rule that holds whatever the other links turn out to be, in any
 * order: its target, with `.` components dropped, may climb with `..` only at its start, and no
 * further than the directories the link itself sits in. `s/..` is refused even when `s` is not
 * (yet) a link, because a later entry can make it one (`s -> .`, and `s/..` is the parent of the
 * root). Together with the two path rules (nothing is written through a symlink, and no symlink
 * takes the place of a path already used), every link resolves inside the root: its parent is a
 * real directory, its leading `..` stay within it, and every later component either descends into
 * a real directory or is itself such a link.
 */
class EntryChecker {
  /** Folded paths of symlinks. */
  private readonly symlinks = new Map<string, string>();
  /** Folded paths of every entry and every directory above one. */
  private readonly used = new Set<string>();
  /** Each path named so far (as named), and whether it is a directory. */
  private readonly named = new Map<string, "directory" | "other">();
  /** Packed size of the whole archive, when known up front (zip), for a running whole-archive ratio. */
  archiveBytes: number | undefined;
  report: Omit<ArchiveReport, "format" | "compressedBytes">;
  constructor(private readonly limits: Limits) {
    this.report = { uncompressedBytes: 0, entries: 0, files: 0, directories: 0, symlinks: 0, hardlinks: 0 };
  }

  /** The symlink `path` runs through or replaces, if any. */
  private throughSymlink(path: string, includeSelf: boolean): string | undefined {
    const parts = fold(path).split("/");
    for (let i = 1; i <= parts.length; i++) {
      if (i === parts.length && !includeSelf) break;
      const link = this.symlinks.get(parts.slice(0, i).join("/"));
      if (link !== undefined) return link;
    }
    return undefined;
  }

  private markUsed(path: string): void {
    const parts = fold(path).split("/");
    for (let i = 1; i <= parts.length; i++) this.used.add(parts.slice(0, i).join("/"));
  }

  /** Counts and checks an entry; returns its normalised path. */
  begin(rawName: string): string {
    this.report.entries++;
    if (this.report.entries > this.limits.maxEntries) {
      throw new ArchiveRejectedError("archive_too_many_entries", `The archive has more than ${this.limits.maxEntries} entries`, rawName.slice(0, 300));
    }
    const path = safeEntryPath(rawName);
    if (path === "") return path;
    const via = this.throughSymlink(path, true);
    if (via === path) throw new ArchiveRejectedError("archive_unsafe_link", `Entry ${path} takes the place of the symlink ${via}`, path);
    if (via !== undefined) throw new ArchiveRejectedError("archive_unsafe_link", `Entry ${path} is written through the symlink ${via}`, path);
    return path;
  }

  /**
   * Refuses a second entry under a name already used (a directory may repeat), and an entry
   * under a name an earlier file or link holds as if it were a directory: extractors settle
   * these differently (GNU tar with --keep-old-files fails, `unzip -n` keeps the first, others
   * keep the last), so the tree screened would not be the tree unpacked.
   */
  private claim(path: string, kind: "directory" | "other"): void {
    const parts = path.split("/");
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join("/");
      if (this.named.get(parent) === "other") throw new ArchiveRejectedError("archive_unsafe_path", `Entry ${path} is under ${parent}, which the archive already holds as a file or link`, path);
      if (!this.named.has(parent)) this.named.set(parent, "directory");
    }
    const earlier = this.named.get(path);
    if (earlier !== undefined && (earlier === "other" || kind === "other")) throw new ArchiveRejectedError("archive_unsafe_path", `Entry ${path} appears more than once in the archive`, path);
    this.named.set(path, kind);
  }

  /** Records a file (or, with `directory`, a directory) entry once it is accepted. */
  accept(path: string, kind: "directory" | "other" = "other"): void {
    if (path === "") return;
    this.claim(path, kind);
    this.markUsed(path);
  }

  symlink(path: string, target: string): void {
    if (!this.limits.allowSymlinks) throw new ArchiveRejectedError("archive_unsafe_link", `Entry ${path} is a symlink, and symlinks are not accepted`, path);
    if (path === "") throw new ArchiveRejectedError("archive_unsafe_link", "The archive root itself is a symlink", path);
    const t = target.replace(/\\/g, "/");
    const shown = t.slice(0, 200);
    if (t === "" || t.includes("\0") || t.length > 4096) throw new ArchiveRejectedError("archive_unsafe_link", `Symlink ${path} has an empty, invalid or over-long target`, path);
    if (t.startsWith("/") || /^[A-Za-z]:/.test(t)) throw new ArchiveRejectedError("archive_unsafe_link", `Symlink ${path} points to the absolute path ${shown}`, path);
    const parts = t.split("/").filter((p) => p !== "" && p !== ".");
    let climbs = 0;
    while (climbs < parts.length && parts[climbs] === "..") climbs++;
    if (parts.slice(climbs).includes("..")) {
      throw new ArchiveRejectedError("archive_unsafe_link", `Symlink ${path} has a .. after another component (${shown}); through a link that could lead anywhere`, path);
    }
    const depth = path.split("/").length - 1;
    if (climbs > depth) throw new ArchiveRejectedError("archive_unsafe_link", `Symlink ${path} points outside the archive (${shown})`, path);
    if (this.used.has(fold(path))) throw new ArchiveRejectedError("archive_unsafe_link", `Symlink ${path} takes the place of an entry already in the archive`, path);
    this.claim(path, "other");
    this.symlinks.set(fold(path), path);
    this.markUsed(path);
    this.report.symlinks++;
  }

  hardlink(path: string, target: string): void {
    let resolved: string;
    try {
      resolved = safeEntryPath(target);
    } catch {
      throw new ArchiveRejectedError("archive_unsafe_link", `Hard link ${path} points outside the archive (${target.slice(0, 200)})`, path);
    }
    const via = this.throughSymlink(resolved, true);
    if (via !== undefined) throw new ArchiveRejectedError("archive_unsafe_link", `Hard link ${path} points through the symlink ${via}`, path);
    this.claim(path, "other");
    this.markUsed(path);
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

/**
 * Pax keywords the screen accepts. GNU tar honours keywords tar-stream ignores (`GNU.sparse.name`
 * renames an entry, `GNU.sparse.*` changes how its data is laid out, `hdrcharset` how its names
 * are decoded), so any keyword outside this list could make GNU tar unpack something other than
 * what was screened. The accepted ones either name the entry the way both read it (`path`,
 * `linkpath`, `size`) or cannot change where or what is written.
 */
const PAX_KEYWORDS = new Set(["path", "linkpath", "size", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname", "comment", "SCHILY.dev", "SCHILY.ino", "SCHILY.nlink", "SCHILY.fflags", "LIBARCHIVE.creationtime", "RHT.security.selinux"]);
const PAX_KEYWORD_PREFIXES = ["SCHILY.xattr.", "LIBARCHIVE.xattr.", "SCHILY.acl."];
/**
 * A global pax header applies to every later entry in GNU tar, but tar-stream only merges it into
 * entries that carry their own pax header: a global `linkpath`, `path` or `size` would reach GNU
 * tar unscreened. Only keywords that cannot move, rename or resize anything may be global
 * (`git archive` writes the commit id as a global `comment`).
 */
const PAX_GLOBAL_KEYWORDS = new Set(["comment", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname"]);
/** Values tar-stream and GNU tar both read the same way; `parseInt` would also take "512abc", which GNU tar refuses. */
const PAX_NUMERIC = /^(0|[1-9][0-9]{0,17})$/;

function checkPax(records: Record<string, string> | null | undefined, global: boolean, path: string): void {
  if (!records) return;
  for (const [key, value] of Object.entries(records)) {
    const allowed = global ? PAX_GLOBAL_KEYWORDS.has(key) : PAX_KEYWORDS.has(key) || PAX_KEYWORD_PREFIXES.some((prefix) => key.startsWith(prefix));
    if (!allowed) {
      throw new ArchiveRejectedError("archive_unsupported", `Entry ${path} has the ${global ? "global " : ""}pax keyword ${JSON.stringify(key.slice(0, 100))}, which the screen does not accept`, path);
    }
    if ((key === "size" || key === "uid" || key === "gid") && !PAX_NUMERIC.test(value)) {
      throw new ArchiveRejectedError("archive_corrupt", `Entry ${path} has the malformed pax ${key} ${JSON.stringify(value.slice(0, 40))}`, path);
    }
  }
}

/**
 * Parses a pax header body the way GNU tar does, refusing what GNU tar would skip as malformed:
 * tar-stream trusts each record's length and drops its last byte unseen, so a record without its
 * newline (or longer than the header) is applied by tar-stream and ignored by GNU tar, which
 * then unpacks the entry under its ustar name.
 */
function strictPax(body: Buffer, global: boolean): void {
  const records: Record<string, string> = {};
  for (let at = 0; at < body.length; ) {
    const space = body.indexOf(0x20, at);
    const digits = space < 0 ? "" : body.subarray(at, space).toString("latin1");
    const length = /^[1-9][0-9]{0,7}$/.test(digits) ? Number(digits) : 0;
    const end = at + length;
    const record = length > 0 && end <= body.length && body[end - 1] === 0x0a ? body.subarray(space + 1, end - 1).toString("utf8") : undefined;
    const equals = record?.indexOf("=") ?? -1;
    if (record === undefined || equals < 1) throw new ArchiveRejectedError("archive_corrupt", `A pax ${global ? "global " : ""}header has a malformed record at byte ${at}`);
    records[record.slice(0, equals)] = record.slice(equals + 1);
    at = end;
  }
  checkPax(records, global, "");
}

/** Entry types that carry no data in GNU tar, whatever size their header declares. */
const DATALESS = new Set(["symlink", "link", "directory", "character-device", "block-device", "fifo"]);

async function screenTar(head: Buffer, rest: AsyncIterator<Uint8Array>, gzipped: boolean, limits: Limits): Promise<ArchiveReport> {
  const counter = { bytes: 0 };
  const checker = new EntryChecker(limits);
  const tar = await loadOptional<typeof TarStream>("tar-stream");
  const extract = tar.extract();
  // tar-stream neither exposes a pax header's bytes nor a global header at all, so both are
  // checked where it decodes them; an error thrown here fails the extraction like a corrupt header.
  const internals = extract as unknown as { _header: { type: string } | null; _decodeLongHeader?: (body: Buffer) => void };
  const decodeLongHeader = internals._decodeLongHeader;
  if (typeof decodeLongHeader !== "function") throw new Error("tar-stream no longer decodes long headers in _decodeLongHeader; pax screening needs updating");
  internals._decodeLongHeader = function (this: typeof internals, body: Buffer) {
    const type = this._header?.type;
    if (type === "pax-header" || type === "pax-global-header") strictPax(body, type === "pax-global-header");
    decodeLongHeader.call(this, body);
  };
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
      checkPax(header.pax as Record<string, string> | undefined, false, path);
      // GNU tar reads no data after a link or directory header, so the bytes tar-stream would
      // skip as "data" are the next header to GNU tar: a second archive hidden in the first.
      if (header.type && DATALESS.has(header.type) && header.size !== 0) {
        throw new ArchiveRejectedError("archive_corrupt", `Entry ${path} is a ${header.type} that declares ${header.size} bytes of data`, path);
      }
      switch (header.type) {
        case "file":
        case "contiguous-file":
          checker.report.files++;
          checker.accept(path);
          break;
        case "directory":
          checker.report.directories++;
          checker.accept(path, "directory");
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
        case null:
        case undefined:
          // GNU sparse files (S), dump directories (D), volume labels (V), continuations (M) and
          // vendor types: GNU tar lays out their data (or further header blocks) its own way.
          throw new ArchiveRejectedError("archive_unsupported", `Entry ${path} has a tar entry type the screen does not accept (sparse, dump directory, volume label or vendor type)`, path);
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
const S_IFREG = 0o100000;
const SPECIAL: Record<number, string> = { 0o020000: "character-device", 0o060000: "block-device", 0o010000: "fifo", 0o140000: "socket" };


/** Info-ZIP's Unicode Path extra field: a UTF-8 name some extractors use instead of the header's. */
function unicodePaths(extra: Buffer): string[] {
  const names: string[] = [];
  for (let at = 0; at + 4 <= extra.length; ) {
    const id = extra.readUInt16LE(at);
    const size = extra.readUInt16LE(at + 2);
    const data = extra.subarray(at + 4, at + 4 + size);
    if (id === 0x7075 && data.length >= 5) names.push(data.subarray(5).toString("utf8"));
    at += 4 + size;
  }
  return names;
}

/** A name's shape for comparison: separators unified, each run of non-ASCII characters as one `*`. */
const nameShape = (name: string) => name.replace(/\\/g, "/").replace(/[^\x00-\x7f]+/g, "*");

/**
 * Checks that the local header agrees with the central directory. Extractors differ in which
 * one they read (Info-ZIP's unzip takes the central name, streaming extractors the local one),
 * so a zip whose two copies disagree would be screened under one name and unpacked under the other.
 */
async function checkLocalHeader(zip: Yauzl.ZipFile, entry: Yauzl.Entry, path: string): Promise<void> {
  const local = await zip.readLocalFileHeaderPromise(entry);
  const refuse = (what: string) => {
    throw new ArchiveRejectedError("archive_unsafe_path", `Entry ${path}: the local header and the central directory disagree on ${what}`, path);
  };
  if (!Buffer.from(local.fileName).equals(Buffer.from(entry.fileNameRaw))) refuse("the name");
  if ((local.generalPurposeBitFlag & 0x801) !== (entry.generalPurposeBitFlag & 0x801)) refuse("the encryption or UTF-8 flag");
  if (local.compressionMethod !== entry.compressionMethod) refuse("the compression method");
  // Without a data descriptor (bit 3) the local header carries the real CRC and sizes too.
  if ((local.generalPurposeBitFlag & 0x8) === 0 && local.crc32 !== entry.crc32) refuse("the CRC");
  // Every spelling of the name an extractor might pick must have the same shape.
  const shape = nameShape(Buffer.from(entry.fileNameRaw).toString("latin1"));
  const unicode = [
    ...unicodePaths(Buffer.from(local.extraField)),
    ...entry.extraFields.filter((f) => f.id === 0x7075 && f.data.length >= 5).map((f) => f.data.subarray(5).toString("utf8")),
  ];
  for (const name of unicode) if (nameShape(name) !== shape) refuse(`the name (its Unicode path field says ${JSON.stringify(name.slice(0, 200))})`);
}

/**
 * Checks that the central directory yauzl read is the one Info-ZIP's unzip will read. yauzl
 * starts at the offset the end record declares and stops after the count it gives; unzip reads
 * records until they run out, and when the directory it finds before the end record is not at
 * the declared offset it takes the difference as bytes prepended to the archive and shifts every
 * offset by it, so a decoy directory could show the screen other entries (or other data) than
 * unzip unpacks. The records read must therefore end exactly where the end record (or the zip64
 * end record) begins, start exactly at the declared offset, and the end record's comment must
 * reach the end of the file. Self-extracting archives (bytes before the zip) are refused too.
 */
function checkDirectoryBounds(buffer: Buffer, recordsEnd: number, entryCount: number): void {
  const refuse = (why: string): never => {
    throw new ArchiveRejectedError("archive_corrupt", `The zip's central directory is ambiguous: ${why}`);
  };
  // The end record yauzl used: the last signature within reach of the end, as yauzl searches.
  let end = -1;
  for (let i = buffer.length - 22; i >= Math.max(0, buffer.length - 22 - 0xffff); i--) {
    if (buffer.readUInt32LE(i) === 0x06054b50) {
      end = i;
      break;
    }
  }
  if (end < 0) refuse("no end record");
  if (end + 22 + buffer.readUInt16LE(end + 20) !== buffer.length) refuse("the end record's comment does not reach the end of the file");
  let directoryEnd = end;
  let size = BigInt(buffer.readUInt32LE(end + 12));
  let offset = BigInt(buffer.readUInt32LE(end + 16));
  if (end >= 20 && buffer.readUInt32LE(end - 20) === 0x07064b50) {
    const record = buffer.readBigUInt64LE(end - 20 + 8);
    if (record > BigInt(end - 56)) refuse("the zip64 end record is out of place");
    directoryEnd = Number(record);
    if (buffer.readUInt32LE(directoryEnd) !== 0x06064b50) refuse("no zip64 end record where its locator points");
    size = buffer.readBigUInt64LE(directoryEnd + 40);
    offset = buffer.readBigUInt64LE(directoryEnd + 48);
    // The zip64 end record (56 bytes and its extensible data) and its locator fill the gap exactly.
    if (BigInt(directoryEnd) + 12n + buffer.readBigUInt64LE(directoryEnd + 4) !== BigInt(end - 20)) refuse("bytes between the zip64 end record and its locator");
  }
  if (recordsEnd !== directoryEnd) refuse(`its ${entryCount} records end at byte ${recordsEnd}, but the end record is at byte ${directoryEnd}`);
  if (offset + size !== BigInt(directoryEnd)) refuse("the declared offset and size do not lead to the end record (bytes before the archive, or a second directory)");
}

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
      await checkLocalHeader(zip, entry, path);
      // The mode bits are honoured whatever host the zip claims to come from: Info-ZIP's unzip
      // creates a link from them for Unix and several other hosts (VMS, Atari, BeOS, AtheOS …).
      const fileType = (entry.externalFileAttributes >>> 16) & S_IFMT;
      if (SPECIAL[fileType]) throw new ArchiveRejectedError("archive_special_file", `Entry ${path} is a ${SPECIAL[fileType]}, which an upload may not contain`, path);
      if (fileType !== 0 && fileType !== S_IFREG && fileType !== S_IFDIR && fileType !== S_IFLNK) {
        throw new ArchiveRejectedError("archive_special_file", `Entry ${path} has the unknown file type 0o${fileType.toString(8)}`, path);
      }
      const namedAsDir = raw.endsWith("/") || raw.endsWith("\\");
      if (fileType === S_IFLNK && namedAsDir) throw new ArchiveRejectedError("archive_unsafe_link", `Entry ${path} is both a directory and a symlink`, path);
      if (namedAsDir || fileType === S_IFDIR) {
        checker.report.directories++;
        checker.accept(path, "directory");
        continue;
      }
      const stream = await zip.openReadStreamPromise(entry);
      if (fileType === S_IFLNK) {
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
      checker.accept(path);
      const meter = checker.meter(path, entry.compressedSize);
      try {
        for await (const chunk of stream) meter((chunk as Buffer).length);
      } finally {
        stream.destroy();
      }
    }
    checkDirectoryBounds(buffer, (zip as unknown as { readEntryCursor: number }).readEntryCursor, zip.entryCount);
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
