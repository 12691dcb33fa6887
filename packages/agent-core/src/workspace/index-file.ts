import { createHash } from "node:crypto";
import { open, readFile } from "node:fs/promises";
import { join } from "node:path";

/** Entry modes' object type (the top four of the 32-bit mode): a gitlink, i.e. a submodule's commit. */
const GITLINK_TYPE = 0b1110;
/** Bytes of an index entry before the object id: ctime, mtime, dev, ino, mode, uid, gid, size. */
const STAT_BYTES = 40;
const EXTENDED_FLAG = 0x4000;
const NAME_MASK = 0xfff;

/**
 * Whether the index of the checkout whose git dir is `gitDir` records a gitlink (a submodule),
 * as `git ls-files --stage` would show one with mode 160000, read from the index file instead of
 * a git process (gitformat-index(5): versions 2, 3 and 4). `hashBytes` is the repository's
 * object id length (20 for SHA-1, 32 for SHA-256). Undefined whenever the file does not answer
 * plainly: a missing or malformed index, another version, a split index (entries kept in a
 * shared file), a sparse index (folders standing for the entries below them) or a checksum that
 * does not match; the caller then asks git.
 */
export async function indexHasGitlink(gitDir: string, hashBytes: number): Promise<boolean | undefined> {
  let data: Buffer;
  try {
    data = await readFile(join(gitDir, "index"));
  } catch {
    return undefined;
  }
  const header = indexHeader(data);
  if ((hashBytes !== 20 && hashBytes !== 32) || data.length < 12 + hashBytes || !header) return undefined;
  // A file whose checksum does not match (or that index.skipHash wrote without one) is left to git.
  const end = data.length - hashBytes;
  const checksum = createHash(hashBytes === 32 ? "sha256" : "sha1").update(data.subarray(0, end)).digest();
  if (!checksum.equals(data.subarray(end))) return undefined;
  const { version, count } = header;
  let offset = 12;
  let gitlink = false;
  for (let i = 0; i < count; i++) {
    const start = offset;
    const flagsAt = start + STAT_BYTES + hashBytes;
    if (flagsAt + 2 > end) return undefined;
    const mode = data.readUInt32BE(start + 24);
    const type = mode >>> 12;
    // A sparse index's folder entry: the entries below it are not in this file.
    if (type === 0b0100) return undefined;
    if (type === GITLINK_TYPE) gitlink = true;
    const flags = data.readUInt16BE(flagsAt);
    let nameAt = flagsAt + 2;
    if (flags & EXTENDED_FLAG) {
      if (version < 3) return undefined;
      nameAt += 2;
    }
    if (version === 4) {
      // The number of bytes dropped from the previous entry's path, as a varint, then the rest of the path.
      while (nameAt < end && data[nameAt]! & 0x80) nameAt++;
      nameAt++;
      const nul = data.indexOf(0, nameAt);
      if (nul < 0 || nul >= end) return undefined;
      offset = nul + 1;
    } else {
      const length = flags & NAME_MASK;
      const nul = length < NAME_MASK ? nameAt + length : data.indexOf(0, nameAt);
      if (nul < 0 || nul >= end || data[nul] !== 0) return undefined;
      // Padded with one to eight NULs to a multiple of eight bytes from the entry's start.
      offset = start + ((nul - start + 8) & ~7);
      if (offset > end) return undefined;
    }
  }
  // Extensions: a four-byte signature and a four-byte size each.
  while (offset + 8 <= end) {
    const signature = data.toString("latin1", offset, offset + 4);
    if (signature === "link" || signature === "sdir") return undefined;
    offset += 8 + data.readUInt32BE(offset + 4);
  }
  return offset === end ? gitlink : undefined;
}

/**
 * How many entries the index of the checkout whose git dir is `gitDir` holds, from its header
 * alone (gitformat-index(5), versions 2 to 4); undefined where the file does not say plainly.
 */
export async function indexEntryCount(gitDir: string): Promise<number | undefined> {
  const header = Buffer.alloc(12);
  try {
    const file = await open(join(gitDir, "index"), "r");
    try {
      if ((await file.read(header, 0, 12, 0)).bytesRead < 12) return undefined;
    } finally {
      await file.close();
    }
  } catch {
    return undefined;
  }
  return indexHeader(header)?.count;
}

/** An index file's header (its first 12 bytes): the signature, a version this module reads (2 to 4), and how many entries follow. */
function indexHeader(data: Buffer): { version: number; count: number } | undefined {
  if (data.length < 12 || data.toString("latin1", 0, 4) !== "DIRC") return undefined;
  const version = data.readUInt32BE(4);
  return version >= 2 && version <= 4 ? { version, count: data.readUInt32BE(8) } : undefined;
}
