// Archive builders and a real-extraction escape check, shared by the upload screening tests.
import { execFileSync } from "node:child_process";
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, isAbsolute, join } from "node:path";
import { crc32 } from "node:zlib";
import * as tar from "tar-stream";

export type TarEntry = Partial<tar.Header> & { name: string; content?: Buffer | string };

/** A real tarball built with tar-stream. */
export async function makeTar(entries: TarEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const done = (async () => {
    const chunks: Buffer[] = [];
    for await (const chunk of pack) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  })();
  for (const { content, ...header } of entries) {
    await new Promise<void>((resolve, reject) => pack.entry({ mode: 0o644, ...header }, content ?? "", (e) => (e ? reject(e) : resolve())));
  }
  pack.finalize();
  return done;
}

export interface ZipEntry {
  name: string;
  data?: Buffer;
  /** Unix mode with the file-type bits, stored in the high half of the external attributes. */
  mode?: number;
  /** The "version made by" host: 3 Unix, 0 MS-DOS, 2 VMS, 5 Atari, 16 BeOS, 30 AtheOS. */
  host?: number;
  /** A different name for the local header than the central directory holds. */
  localName?: string;
  /** Info-ZIP Unicode Path fields (0x7075) for the central directory and the local header. */
  unicodePath?: { central?: string; local?: string };
  /** A different compression method in the local header only (the data stays stored). */
  localMethod?: number;
}

function unicodeField(name: Buffer, unicode: string): Buffer {
  const text = Buffer.from(unicode, "utf8");
  const field = Buffer.alloc(4 + 5);
  field.writeUInt16LE(0x7075, 0);
  field.writeUInt16LE(5 + text.length, 2);
  field.writeUInt8(1, 4);
  field.writeUInt32LE(crc32(name), 5);
  return Buffer.concat([field, text]);
}

/** A stored-only zip writer that can make the headers disagree. */
export function makeZip(entries: ZipEntry[]): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name, "utf8");
    const localName = Buffer.from(e.localName ?? e.name, "utf8");
    const data = e.data ?? Buffer.alloc(0);
    const crc = crc32(data);
    const localExtra = e.unicodePath?.local === undefined ? Buffer.alloc(0) : unicodeField(localName, e.unicodePath.local);
    const centralExtra = e.unicodePath?.central === undefined ? Buffer.alloc(0) : unicodeField(name, e.unicodePath.central);
    const method = e.localMethod ?? 0;
    const packed = data;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(0, 6);
    local.writeUInt16LE(method, 8);
    local.writeUInt16LE(0x21, 12);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(packed.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(localName.length, 26);
    local.writeUInt16LE(localExtra.length, 28);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(((e.host ?? 3) << 8) | 30, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(0, 8);
    central.writeUInt16LE(0, 10);
    central.writeUInt16LE(0x21, 14);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(packed.length, 20);
    central.writeUInt32LE(data.length, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt16LE(centralExtra.length, 30);
    central.writeUInt32LE(((e.mode ?? 0o100644) << 16) >>> 0, 38);
    central.writeUInt32LE(offset, 42);
    centrals.push(Buffer.concat([central, name, centralExtra]));
    locals.push(local, localName, localExtra, packed);
    offset += local.length + localName.length + localExtra.length + packed.length;
  }
  const cd = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(centrals.length, 8);
  end.writeUInt16LE(centrals.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, end]);
}

/** Where a path really leads, asking the kernel (`realpath(3)`, not Node's JS walk); null when it leads nowhere. */
function physical(path: string, hops = 0): string | null {
  try {
    return realpathSync.native(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT" || hops > 40) return null;
    const name = basename(path);
    if (name === ".." || name === ".") return null;
    const parent = physical(dirname(path), hops);
    if (parent === null) return null;
    const full = `${parent}/${name}`;
    let link: string;
    try {
      if (!lstatSync(full).isSymbolicLink()) return full;
      link = readlinkSync(full);
    } catch {
      return full; // missing: this is where it would be created
    }
    return physical(isAbsolute(link) ? link : `${parent}/${link}`, hops + 1);
  }
}

function walk(dir: string, out: string[] = []): string[] {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    out.push(path);
    if (lstatSync(path).isDirectory()) walk(path, out);
  }
  return out;
}

export interface Extraction {
  /** Links whose target leads outside the extraction root, with where they lead. */
  escapes: Array<{ link: string; leadsTo: string }>;
  /** Paths that appeared outside the extraction root. */
  writtenOutside: string[];
  /** The extractor's exit status (it may refuse some entries). */
  status: number;
}

/**
 * Unpacks an archive for real (GNU `tar` or Info-ZIP `unzip`) inside a few levels of scratch
 * directories and reports every link that leads out of the root and anything written outside it.
 */
export function extractForReal(archive: Buffer, kind: "tar" | "zip"): Extraction {
  const base = mkdtempSync(join(tmpdir(), "keen-extract-"));
  try {
    const root = join(base, "a", "b", "c", "d", "root");
    mkdirSync(root, { recursive: true });
    writeFileSync(join(base, "a", "outside.txt"), "outside");
    const before = new Set(walk(base));
    const file = join(base, kind === "tar" ? "x.tar" : "x.zip");
    writeFileSync(file, archive);
    before.add(file);
    let status = 0;
    try {
      if (kind === "tar") execFileSync("tar", ["-xf", file, "-C", root], { stdio: "pipe" });
      else execFileSync("unzip", ["-o", "-qq", file, "-d", root], { stdio: "pipe" });
    } catch (error) {
      status = (error as { status?: number }).status ?? 1;
    }
    const realRoot = realpathSync.native(root);
    const escapes: Extraction["escapes"] = [];
    const writtenOutside: string[] = [];
    for (const path of walk(base)) {
      const inside = path === root || path.startsWith(root + "/");
      if (!inside) {
        if (!before.has(path)) writtenOutside.push(path);
        continue;
      }
      if (!lstatSync(path).isSymbolicLink()) continue;
      const leadsTo = physical(path);
      if (leadsTo !== null && leadsTo !== realRoot && !leadsTo.startsWith(realRoot + "/")) escapes.push({ link: path.slice(root.length + 1), leadsTo });
    }
    return { escapes, writtenOutside, status };
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
}
