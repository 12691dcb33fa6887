// Symlink chains and zip header disagreements, proven against real extractors: GNU tar and
// Info-ZIP unzip unpack each archive, and the kernel's realpath says where every link leads.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { extractForReal, makeTar, makeZip, type TarEntry, type ZipEntry } from "./archive-fixtures.js";
import { ArchiveRejectedError, screenArchive } from "./uploads.js";
import { errorStatus } from "../http-error.js";

/** A domain error as the HTTP edge answers it: its fields plus the status from the code table. */
const atEdge = (error: unknown) => ({ ...(error as object), message: (error as Error).message, status: errorStatus(error) });

const hasUnzip = (() => {
  try {
    execFileSync("unzip", ["-v"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

async function verdict(archive: Buffer): Promise<ArchiveRejectedError | "accepted"> {
  try {
    await screenArchive(archive);
    return "accepted";
  } catch (error) {
    expect(error).toBeInstanceOf(ArchiveRejectedError);
    return error as ArchiveRejectedError;
  }
}

const link = (name: string, linkname: string): TarEntry => ({ name, type: "symlink", linkname });

/** `s -> .`, `l1 -> s/..`, `l2 -> l1/..`, …: each step climbs one more level once extracted. */
const chain = (length: number): TarEntry[] => [link("s", "."), ...Array.from({ length }, (_, i) => link(`l${i + 1}`, `${i === 0 ? "s" : `l${i}`}/..`))];

describe("symlink chains", () => {
  const attacks: Array<[string, TarEntry[]]> = [
    ["s -> . then t -> s/..", [link("s", "."), link("t", "s/..")]],
    ["t -> s/.. before s -> .", [link("t", "s/.."), link("s", ".")]],
    ["a chain l1 -> s/.., l2 -> l1/.., … l8", chain(8)],
    ["a chain through a subdirectory", [{ name: "d/", type: "directory" }, link("d/s", ".."), link("d/t", "s/../..")]],
    ["a link hidden behind ./ components", [link("s", "./."), link("t", "./s/./../.")]],
    ["a link that climbs further than it sits deep", [{ name: "a/", type: "directory" }, link("a/up", "../..")]],
    ["a directory entry replacing a link", [link("s", "."), { name: "s", type: "directory" }]],
    ["a link replacing a directory already used", [{ name: "d/x", content: "x" }, link("d", "..")]],
    ["a file written through a link whose name differs only in case", [link("D", "."), { name: "d/x", content: "x" }]],
  ];

  it.each(attacks)("refuses %s", async (_, entries) => {
    const result = await verdict(await makeTar(entries));
    expect(result).not.toBe("accepted");
    expect(atEdge(result)).toMatchObject({ status: 422, code: "archive_unsafe_link" });
  });

  it("the attacks are real: unscreened, GNU tar leaves links that lead out of the root", async () => {
    const t = extractForReal(await makeTar([link("s", "."), link("t", "s/..")]), "tar");
    expect(t.escapes.map((e) => e.link)).toEqual(["t"]);
    const deep = extractForReal(await makeTar(chain(6)), "tar");
    expect(deep.escapes.length).toBeGreaterThanOrEqual(5);
  });

  it("still accepts the links repositories really hold", async () => {
    const ok = await makeTar([
      { name: "repo/src/", type: "directory" },
      { name: "repo/src/index.ts", content: "x" },
      link("repo/README.md", "src/index.ts"),
      link("repo/src/alias.ts", "../README.md"),
      link("repo/src/self", "."),
      link("repo/docs", "./src/"),
    ]);
    expect(await screenArchive(ok)).toMatchObject({ symlinks: 4 });
  });

  // Random archives of links, directories and files named from a tiny alphabet, so chains,
  // reorderings and names reused across entries all turn up. Every archive the screen accepts
  // is unpacked by GNU tar (and Info-ZIP unzip), and no link may lead out.
  const random = (seed: number) => () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x7fffffff;
  };
  const pick = <T,>(next: () => number, items: readonly T[]) => items[Math.floor(next() * items.length)]!;
  const names = ["s", "t", "u", "d/s", "d/t", "d/e/s"];
  const parts = [".", "..", "s", "t", "u", "d", "e", "x"];

  function randomEntries(next: () => number): TarEntry[] {
    const entries: TarEntry[] = [{ name: "d/", type: "directory" }, { name: "d/e/", type: "directory" }, { name: "x", content: "x" }];
    const count = 2 + Math.floor(next() * 5);
    for (let i = 0; i < count; i++) {
      const target = Array.from({ length: 1 + Math.floor(next() * 4) }, () => pick(next, parts)).join("/");
      if (next() < 0.15) entries.push({ name: `${pick(next, names)}/f`, content: "f" });
      else entries.push(link(pick(next, names), target));
    }
    return entries.sort(() => next() - 0.5);
  }

  it("nothing an accepted tarball holds leads out once GNU tar unpacked it (property, 250 archives)", async () => {
    const next = random(20261201);
    let accepted = 0;
    for (let i = 0; i < 250; i++) {
      const entries = randomEntries(next);
      const archive = await makeTar(entries);
      if ((await verdict(archive)) !== "accepted") continue;
      accepted++;
      const result = extractForReal(archive, "tar");
      expect({ entries: entries.map((e) => `${e.name}${e.linkname ? ` -> ${e.linkname}` : ""}`), ...result }).toMatchObject({ escapes: [], writtenOutside: [] });
    }
    // The generator must produce accepted archives, or the property proves nothing.
    expect(accepted).toBeGreaterThan(40);
  });

  it.runIf(hasUnzip)("nothing an accepted zip holds leads out once Info-ZIP unzip unpacked it (property, 150 archives)", async () => {
    const next = random(77);
    let accepted = 0;
    for (let i = 0; i < 150; i++) {
      const entries: ZipEntry[] = randomEntries(next).map((e) =>
        e.type === "symlink" ? { name: e.name, data: Buffer.from(e.linkname!), mode: 0o120777 } : e.type === "directory" ? { name: e.name, mode: 0o040755 } : { name: e.name, data: Buffer.from("f") },
      );
      const archive = makeZip(entries);
      if ((await verdict(archive)) !== "accepted") continue;
      accepted++;
      expect(extractForReal(archive, "zip")).toMatchObject({ escapes: [], writtenOutside: [] });
    }
    expect(accepted).toBeGreaterThan(20);
  });
});

describe("names", () => {
  it("shows terminal escapes and bidi overrides in a refused name as visible escapes", async () => {
    const error = await verdict(await makeTar([{ name: "../\u001b]0;pwned\u0007\u202eevil", content: "x" }]));
    expect(error).toMatchObject({ code: "archive_unsafe_path", entry: "../\\u{1b}]0;pwned\\u{7}\\u{202e}evil" });
    expect((error as ArchiveRejectedError).message).not.toMatch(/[\u001b\u0007\u202e]/);
  });

  it("refuses entry names and link targets longer than PATH_MAX", async () => {
    expect(await verdict(await makeTar([{ name: `${"d/".repeat(2100)}f`, content: "x" }]))).toMatchObject({ code: "archive_unsafe_path" });
    expect(await verdict(await makeTar([link("l", "a/".repeat(2100))]))).toMatchObject({ code: "archive_unsafe_link" });
  });
});

describe("zip headers", () => {
  const etc = Buffer.from("../../../../../../../../etc");

  it.each([
    ["Unix", 3],
    ["MS-DOS", 0],
    ["VMS", 2],
    ["Atari", 5],
    ["BeOS", 16],
    ["AtheOS", 30],
    ["an unknown host", 99],
  ])("treats symlink mode bits as a link on a zip made on %s", async (_, host) => {
    const result = await verdict(makeZip([{ name: "etc", data: etc, mode: 0o120777, host }]));
    expect(result).toMatchObject({ code: "archive_unsafe_link", entry: "etc" });
  });

  it.runIf(hasUnzip)("the non-Unix host attack is real: unscreened, unzip makes a link to /etc", () => {
    const result = extractForReal(makeZip([{ name: "etc", data: etc, mode: 0o120777, host: 16 }]), "zip");
    expect(result.escapes).toEqual([{ link: "etc", leadsTo: "/etc" }]);
  });

  it("refuses special and unknown file types whatever the host", async () => {
    expect(await verdict(makeZip([{ name: "p", mode: 0o010644, host: 0 }]))).toMatchObject({ code: "archive_special_file" });
    expect(await verdict(makeZip([{ name: "q", mode: 0o030644, host: 2 }]))).toMatchObject({ code: "archive_special_file" });
    expect(await verdict(makeZip([{ name: "l/", data: Buffer.from("x"), mode: 0o120777 }]))).toMatchObject({ code: "archive_unsafe_link" });
  });

  it.each<[string, ZipEntry]>([
    ["a local name differing from the central one", { name: "safe.txt", localName: "../../evil.sh", data: Buffer.from("x") }],
    ["a local name differing only in case", { name: "a.txt", localName: "A.txt", data: Buffer.from("x") }],
    ["a central Unicode path field with another name", { name: "safe.txt", unicodePath: { central: "other/evil.sh" }, data: Buffer.from("x") }],
    ["a local Unicode path field with another name", { name: "safe.txt", unicodePath: { local: "../evil" }, data: Buffer.from("x") }],
    ["a local compression method differing from the central one", { name: "a.txt", localMethod: 8, data: Buffer.from("hello hello hello") }],
  ])("refuses %s", async (_, entry) => {
    expect(atEdge(await verdict(makeZip([entry])))).toMatchObject({ status: 422, code: "archive_unsafe_path", message: expect.stringMatching(/disagree/) });
  });

  it("accepts a Unicode path field that spells the same name", async () => {
    expect(await screenArchive(makeZip([{ name: "src/a.txt", unicodePath: { central: "src/a.txt", local: "src/a.txt" }, data: Buffer.from("x") }]))).toMatchObject({ files: 1 });
  });

  it.runIf(hasUnzip)("the name mismatch matters: unzip takes the central name, which screening must have seen", () => {
    // Screening the local name alone would have judged "safe.txt"; unzip writes the central one.
    const dir = mkdtempSync(join(tmpdir(), "keen-zip-"));
    try {
      writeFileSync(join(dir, "x.zip"), makeZip([{ name: "evil.sh", localName: "safe.txt", data: Buffer.from("x") }]));
      try {
        execFileSync("unzip", ["-qq", "x.zip", "-d", "out"], { cwd: dir, stdio: "pipe" });
      } catch {
        // unzip warns about the mismatch (exit status 1) and carries on with the central name.
      }
      expect(readdirSync(join(dir, "out"))).toEqual(["evil.sh"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
