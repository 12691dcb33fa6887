// Archives that two parsers read differently: the screen must see what GNU tar and Info-ZIP unzip
// will unpack, or refuse. Each attack is first shown to escape with the real extractor.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { extractForReal, makeTar, makeZip, paxRecords, rawTarEntry, rawTarHeader, tarEnd } from "./archive-fixtures.js";
import { errorStatus } from "../http-error.js";
import { ArchiveRejectedError, screenArchive } from "./uploads.js";

const hasUnzip = (() => {
  try {
    execFileSync("unzip", ["-v"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

/** What the screen decided, with the status the HTTP edge answers a refusal with. */
async function verdict(archive: Buffer): Promise<{ code: string; status: number; message: string } | "accepted"> {
  try {
    await screenArchive(archive);
    return "accepted";
  } catch (error) {
    expect(error).toBeInstanceOf(ArchiveRejectedError);
    const refusal = error as ArchiveRejectedError;
    return { code: refusal.code, status: errorStatus(refusal), message: refusal.message };
  }
}

const outside = "../../../../../../../../etc";
const paxEntry = (records: Array<[string, string]>) => rawTarEntry({ name: "PaxHeaders/x", type: "x" }, paxRecords(records));
const paxGlobal = (records: Array<[string, string]>) => rawTarEntry({ name: "pax_global_header", type: "g" }, paxRecords(records));
/** A symlink header that leads out, hidden where tar-stream sees data and GNU tar sees the next header. */
const hidden = rawTarEntry({ name: "hid", type: "2", linkname: outside });

const tarAttacks: Array<[string, Buffer]> = [
  ["a global pax header whose linkpath applies to every later link", Buffer.concat([paxGlobal([["linkpath", outside]]), rawTarEntry({ name: "l", type: "2", linkname: "ok" }), tarEnd()])],
  ["a global pax header that sets every later size to 0", Buffer.concat([paxGlobal([["size", "0"]]), rawTarEntry({ name: "f" }, hidden), tarEnd()])],
  ["GNU.sparse.name renaming a deep link to the root", Buffer.concat([paxEntry([["GNU.sparse.name", "l"], ["path", "d1/d2/d3/l"]]), rawTarEntry({ name: "d1/d2/d3/l", type: "2", linkname: "../../.." }), tarEnd()])],
  ["a symlink that declares data", Buffer.concat([rawTarHeader({ name: "l", type: "2", linkname: "x", size: 512 }), hidden, tarEnd()])],
  ["a hard link that declares data", Buffer.concat([rawTarEntry({ name: "f" }, "x"), rawTarHeader({ name: "h", type: "1", linkname: "f", size: 512 }), hidden, tarEnd()])],
  ["a directory that declares data", Buffer.concat([rawTarHeader({ name: "dd/", type: "5", size: 512 }), hidden, tarEnd()])],
  ["a pax size that gives a symlink data", Buffer.concat([paxEntry([["size", "512"]]), rawTarHeader({ name: "l", type: "2", linkname: "x" }), hidden, tarEnd()])],
  ["a pax record missing its newline, which GNU tar skips (falling back to the ustar name)", Buffer.concat([
    rawTarEntry({ name: "PaxHeaders/x", type: "x" }, Buffer.concat([paxRecords([["path", "d1/d2/d3/l"]]).subarray(0, -1), Buffer.from("X")])),
    rawTarEntry({ name: "l", type: "2", linkname: "../../.." }),
    tarEnd(),
  ])],
  ["a pax record longer than its header, which GNU tar skips", Buffer.concat([
    rawTarEntry({ name: "PaxHeaders/x", type: "x" }, "99 path=d1/d2/d3/l\n"),
    rawTarEntry({ name: "l", type: "2", linkname: "../../.." }),
    tarEnd(),
  ])],
];

describe("tar entries GNU tar and the screen would read differently", () => {
  it.each(tarAttacks)("the attack is real: %s leads out with GNU tar", (_, archive) => {
    expect(extractForReal(archive, "tar").escapes.length).toBeGreaterThan(0);
  });

  it.each(tarAttacks)("refuses %s, without hanging", async (_, archive) => {
    const result = await verdict(archive);
    expect(result).not.toBe("accepted");
    expect(result).toMatchObject({ status: 422 });
  });

  it.each([
    ["an old GNU sparse file (S)", "S"],
    ["a GNU dump directory (D)", "D"],
    ["a volume label (V)", "V"],
    ["a multi-volume continuation (M)", "M"],
    ["an unknown vendor type (X)", "X"],
  ])("refuses %s instead of treating it as a file", async (_, type) => {
    const result = await verdict(Buffer.concat([rawTarEntry({ name: "f", type }, "data"), tarEnd()]));
    expect(result).toMatchObject({ status: 422, code: "archive_unsupported" });
  });

  it("refuses a global pax header with a keyword other than comment or times, even with no entry after it", async () => {
    expect(await verdict(Buffer.concat([rawTarEntry({ name: "f" }, "x"), paxGlobal([["path", "x"]]), tarEnd()]))).toMatchObject({ status: 422, code: "archive_unsupported" });
  });

  it("refuses a pax size GNU tar would not read as a number", async () => {
    const archive = Buffer.concat([paxEntry([["size", "512abc"]]), rawTarHeader({ name: "f" }), hidden, tarEnd()]);
    expect(extractForReal(archive, "tar").escapes.length).toBeGreaterThan(0);
    expect(await verdict(archive)).toMatchObject({ status: 422, code: "archive_corrupt" });
  });

  it("refuses pax keywords that change an entry in ways the screen cannot follow", async () => {
    for (const key of ["GNU.sparse.major", "GNU.sparse.realsize", "hdrcharset", "SCHILY.filetype"]) {
      const result = await verdict(Buffer.concat([paxEntry([[key, "1"]]), rawTarEntry({ name: "f" }, "x"), tarEnd()]));
      expect(result, key).toMatchObject({ status: 422, code: "archive_unsupported" });
    }
  });

  it("still accepts what real tools write: git archive's global comment, GNU tar's pax times and xattrs, long names", async () => {
    const longName = `${"d".repeat(120)}/${"f".repeat(120)}.ts`;
    const archive = Buffer.concat([
      paxGlobal([["comment", "0123456789abcdef0123456789abcdef01234567"]]),
      paxEntry([["path", longName], ["mtime", "1700000000.5"], ["atime", "1700000000.5"], ["SCHILY.xattr.user.x", "1"], ["LIBARCHIVE.xattr.user.y", "eQ=="]]),
      rawTarEntry({ name: "short.ts" }, "x"),
      tarEnd(),
    ]);
    expect(await screenArchive(archive)).toMatchObject({ files: 1 });
    const packed = await makeTar([{ name: longName, content: "x" }, { name: "l", type: "symlink", linkname: longName }]);
    expect(await screenArchive(packed)).toMatchObject({ files: 1, symlinks: 1 });
  });
});

describe.skipIf(!hasUnzip)("zip central directories unzip reads further than the screen", () => {
  const withHiddenLink = () => {
    const zip = makeZip([{ name: "a.txt", data: Buffer.from("a") }, { name: "l", data: Buffer.from(outside), mode: 0o120777 }]);
    const end = zip.length - 22;
    zip.writeUInt16LE(1, end + 8);
    zip.writeUInt16LE(1, end + 10);
    return zip;
  };

  it("the attack is real: an end record that counts fewer entries than the directory holds hides a link from yauzl, not from unzip", () => {
    expect(extractForReal(withHiddenLink(), "zip").escapes.map((e) => e.link)).toEqual(["l"]);
  });

  it("refuses a central directory with more records than the end record counts", async () => {
    expect(await verdict(withHiddenLink())).toMatchObject({ status: 422, code: "archive_corrupt" });
  });

  const hasZip = (() => {
    try {
      execFileSync("zip", ["-v"], { stdio: "ignore" });
      return true;
    } catch {
      return false;
    }
  })();

  it.skipIf(!hasZip)("still accepts what Info-ZIP zip writes: zip64 end records (-fz) and data descriptors (written to a pipe)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keen-zip-"));
    try {
      mkdirSync(join(dir, "src", "d"), { recursive: true });
      writeFileSync(join(dir, "src", "d", "a.txt"), "hello\n".repeat(1000));
      symlinkSync("d/a.txt", join(dir, "src", "l"));
      execFileSync("zip", ["-qry", "-fz", join(dir, "z64.zip"), "."], { cwd: join(dir, "src") });
      const z64 = readFileSync(join(dir, "z64.zip"));
      expect(z64.includes(Buffer.from([0x50, 0x4b, 0x06, 0x06]))).toBe(true);
      expect(await screenArchive(z64)).toMatchObject({ files: 1, directories: 1, symlinks: 1 });
      const piped = execFileSync("sh", ["-c", "zip -qr - . | cat"], { cwd: join(dir, "src") });
      expect(piped.readUInt16LE(6) & 0x8).toBe(0x8);
      expect(await screenArchive(piped)).toMatchObject({ files: 2, directories: 1, symlinks: 0 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  /**
   * Two central directories: the end record points yauzl at a decoy directory (a harmless link),
   * while Info-ZIP's unzip finds the real one just before the end record, takes the difference
   * as bytes prepended to the archive and shifts every offset by it, reaching a second local
   * header whose link leads out. Four `PK\x06\x06` bytes after the decoy mimic a zip64 end record.
   */
  const withDecoyDirectory = () => {
    const decoy = makeZip([{ name: "l", data: Buffer.from("x".repeat(outside.length)), mode: 0o120777 }]);
    const real = makeZip([{ name: "l", data: Buffer.from(outside), mode: 0o120777 }]);
    const localLength = decoy.readUInt32LE(decoy.length - 6);
    const cdLength = decoy.readUInt32LE(decoy.length - 10);
    const marker = Buffer.from([0x50, 0x4b, 0x06, 0x06]);
    const decoyLocal = decoy.subarray(0, localLength);
    const decoyCd = decoy.subarray(localLength, localLength + cdLength);
    const realLocal = real.subarray(0, localLength);
    const realCd = Buffer.from(real.subarray(localLength, localLength + cdLength));
    const F = decoyLocal.length;
    const R = F + decoyCd.length + marker.length;
    const C = R + realLocal.length;
    realCd.writeUInt32LE(R - (C - F), 42);
    const end = Buffer.from(decoy.subarray(decoy.length - 22));
    end.writeUInt32LE(F, 16);
    return Buffer.concat([decoyLocal, decoyCd, marker, realLocal, realCd, end]);
  };

  it("the attack is real: a decoy central directory shows yauzl one link target and unzip another", () => {
    expect(extractForReal(withDecoyDirectory(), "zip").escapes.map((e) => e.link)).toEqual(["l"]);
  });

  it("refuses a zip whose central directory does not end where its end record begins", async () => {
    expect(await verdict(withDecoyDirectory())).toMatchObject({ status: 422, code: "archive_corrupt" });
    const prepended = Buffer.concat([Buffer.from("#!/bin/sh\nexit 0\n"), makeZip([{ name: "a.txt", data: Buffer.from("a") }])]);
    expect(await verdict(prepended)).not.toBe("accepted");
  });

  it("still accepts a plain zip", async () => {
    expect(await screenArchive(makeZip([{ name: "a.txt", data: Buffer.from("a") }, { name: "b/", mode: 0o40755 }]))).toMatchObject({ files: 1, directories: 1 });
  });
});
