import { mkdtemp, readdir, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { expect, it } from "vitest";
import { describeEachDatabase, signup, useTestServer, type Account } from "../testing/harness.js";

/** Builds an archive with Python's tarfile/zipfile, which write whatever entries they are told. */
const BUILD = `
import io, sys, tarfile, zipfile
kind, marker = sys.argv[1], sys.argv[2]
hook = ("#!/bin/sh\\ntouch %s\\n" % marker).encode()
config = ("[core]\\n\\tfsmonitor = touch %s\\n\\thooksPath = hooks\\n" % marker).encode()
buf = io.BytesIO()
if kind.startswith("zip"):
    z = zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED)
    if kind == "zip-duplicate": z.writestr("a.txt", b"first"); z.writestr("a.txt", b"second")
    if kind == "zip-git": z.writestr(".git/config", config); z.writestr(".git/hooks/pre-commit", hook); z.writestr("x.txt", b"x")
    z.close()
else:
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add(name, data=b"x", **kw):
            info = tarfile.TarInfo(name); info.size = len(data); info.mode = kw.pop("mode", 0o644)
            for k, v in kw.items(): setattr(info, k, v)
            if info.type != tarfile.REGTYPE: info.size = 0
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
        if kind == "duplicate": add("a.txt", b"first"); add("a.txt", b"second")
        if kind == "file-then-under": add("a", b"file"); add("a/b", b"under")
        if kind == "link-then-duplicate": add("t.txt"); add("h", type=tarfile.LNKTYPE, linkname="t.txt"); add("h", b"other")
        if kind == "git-any-case":
            add(".GIT/config", config); add(".Git/hooks/pre-commit", hook, mode=0o755)
            add("sub/.git", b"gitdir: /etc\\n"); add("sub/y")
            add(".gitattributes", b"* filter=x diff=x merge=x\\n"); add("z")
        if kind == "git-link": add(".git", type=tarfile.SYMTYPE, linkname="real"); add("real/config", config); add("real/hooks/post-commit", hook, mode=0o755)
sys.stdout.buffer.write(buf.getvalue())
`;

/**
 * Entry names an archive uses twice, or uses as a directory after a file took them: GNU tar
 * (with --keep-old-files) fails on them and `unzip -n` keeps the first silently, so the tree
 * screened is not the tree unpacked. And `.git` in any spelling, steering nothing.
 */
describeEachDatabase("attack: upload entry names", (database) => {
  const t = useTestServer(() => ({ ...database.settings, workers: 0, modelBaseUrl: "http://127.0.0.1:9", rateLimit: 10_000 }));
  let user: Account;
  let marker: string;

  const build = async (kind: string) => Buffer.from((await execa("python3", ["-c", BUILD, kind, marker], { encoding: "buffer" })).stdout as unknown as Uint8Array);
  const upload = async (body: Buffer) => {
    const res = await fetch(`${t.url}/v1/uploads`, { method: "POST", headers: { ...user.headers, "content-type": "application/octet-stream" }, body });
    return { status: res.status, body: (await res.json()) as { id?: string; error?: { code: string; details?: { entry?: string } } } };
  };
  const uploadsOnDisk = async () => readdir(join(t.server.config.workspacesDir, user.userId, "uploads")).catch(() => [] as string[]);

  it("a name used twice, or a file then used as a directory, is refused with the entry named, and nothing is unpacked", async () => {
    user = await signup(t.url);
    marker = join(await mkdtemp(join(tmpdir(), "keen-marker-")), "ran");
    for (const [kind, entry] of [["duplicate", "a.txt"], ["zip-duplicate", "a.txt"], ["file-then-under", "a/b"], ["link-then-duplicate", "h"]] as const) {
      const res = await upload(await build(kind));
      expect(res.status, kind).toBe(422);
      expect(res.body.error, kind).toMatchObject({ code: "archive_unsafe_path", details: { entry } });
    }
    expect(await uploadsOnDisk()).toEqual([]);
  });

  it(".git in any spelling, as a folder, a gitdir file or a link, is dropped and runs nothing", async () => {
    for (const kind of ["git-any-case", "git-link", "zip-git"]) {
      const res = await upload(await build(kind));
      expect(res.status, `${kind} ${JSON.stringify(res.body)}`).toBe(201);
      const repo = join(t.server.config.workspacesDir, user.userId, "uploads", res.body.id!);
      const tracked = (await execa("git", ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "ls-files"], { cwd: repo, env: { GIT_DIR: join(repo, ".git"), GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null" } })).stdout.split("\n");
      expect(tracked.filter((path) => path.split("/").some((part) => part.toLowerCase() === ".git")), kind).toEqual([]);
      expect((await stat(join(repo, ".git"))).isDirectory()).toBe(true);
    }
    await expect(stat(marker)).rejects.toMatchObject({ code: "ENOENT" });
  });
});
