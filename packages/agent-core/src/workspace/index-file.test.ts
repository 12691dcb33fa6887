import { readFile, realpath, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { indexHasGitlink } from "./index-file.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "./test-repo.js";

const git = async (cwd: string, ...args: string[]) => (await execa("git", args, { cwd, env: TEST_GIT_IDENTITY })).stdout;
/** What keen asked git before: does `ls-files --stage` show a mode 160000 entry? */
const gitSaysGitlink = async (repo: string) => (await git(repo, "ls-files", "--stage")).split("\n").some((line) => line.startsWith("160000 "));
const addGitlink = async (repo: string, path: string) => git(repo, "update-index", "--add", "--cacheinfo", `160000,${(await git(repo, "rev-parse", "HEAD")).trim()},${path}`);

async function repo(): Promise<{ dir: string; gitDir: string }> {
  const dir = await createTestRepo({ "README.md": "# r\n", "lib/x.ts": "x\n", "src/a.ts": "a\n", "src/deep/b.ts": "b\n", "z.txt": "z\n" });
  return { dir, gitDir: await realpath(join(dir, ".git")) };
}

describe("indexHasGitlink reads what git ls-files --stage shows", () => {
  it("versions 2, 3 (an intent-to-add entry) and 4, with and without a gitlink", async () => {
    for (const version of ["2", "3", "4"]) {
      const { dir, gitDir } = await repo();
      await git(dir, "update-index", "--index-version", version);
      if (version === "3") {
        await writeFile(join(dir, "new.txt"), "n\n");
        await git(dir, "add", "-N", "new.txt");
      }
      expect(await indexHasGitlink(gitDir, 20), `v${version}`).toBe(false);
      expect(await gitSaysGitlink(dir)).toBe(false);
      await addGitlink(dir, "src/sub");
      expect(await indexHasGitlink(gitDir, 20), `v${version}`).toBe(true);
      expect(await gitSaysGitlink(dir)).toBe(true);
      expect((await readFile(join(gitDir, "index"))).readUInt32BE(4)).toBe(Number(version));
    }
  });

  it("paths longer than the name field holds (4095 bytes and more), before a gitlink", async () => {
    for (const version of ["2", "4"]) {
      const { dir, gitDir } = await repo();
      await git(dir, "update-index", "--index-version", version);
      const blob = (await execa("git", ["hash-object", "-w", "--stdin"], { cwd: dir, input: "x\n" })).stdout.trim();
      const long = Array.from({ length: 40 }, (_, i) => `${String(i).padStart(3, "0")}-${"d".repeat(120)}`).join("/");
      expect(long.length).toBeGreaterThan(4095);
      await git(dir, "update-index", "--add", "--cacheinfo", `100644,${blob},${long}/file`);
      expect(await indexHasGitlink(gitDir, 20)).toBe(false);
      await addGitlink(dir, "zz-sub");
      expect(await indexHasGitlink(gitDir, 20)).toBe(true);
      expect(await gitSaysGitlink(dir)).toBe(true);
    }
  });

  it("a SHA-256 repository", async () => {
    const dir = (await createTestRepo()).concat("-sha256");
    await execa("git", ["init", "-q", "--object-format=sha256", "-b", "main", dir]);
    await writeFile(join(dir, "a.txt"), "a\n");
    await git(dir, "add", "a.txt");
    await git(dir, "commit", "-qm", "one");
    expect(await indexHasGitlink(join(dir, ".git"), 32)).toBe(false);
    await addGitlink(dir, "sub");
    expect(await indexHasGitlink(join(dir, ".git"), 32)).toBe(true);
    // Read with the wrong id length, the checksum does not match: git is asked instead.
    expect(await indexHasGitlink(join(dir, ".git"), 20)).toBeUndefined();
  });

  it("leaves it to git when the file does not answer plainly: split or sparse index, a checksum that does not match, no index", async () => {
    const split = await repo();
    await addGitlink(split.dir, "sub");
    await git(split.dir, "update-index", "--split-index");
    expect(await indexHasGitlink(split.gitDir, 20)).toBeUndefined();

    const sparse = await repo();
    await git(sparse.dir, "sparse-checkout", "set", "--cone", "--sparse-index", "src/deep");
    expect((await git(sparse.dir, "ls-files", "--sparse", "--stage")).split("\n").some((line) => line.startsWith("040000 "))).toBe(true);
    expect(await indexHasGitlink(sparse.gitDir, 20)).toBeUndefined();

    const corrupt = await repo();
    const data = await readFile(join(corrupt.gitDir, "index"));
    data[20] = data[20]! ^ 0xff;
    await writeFile(join(corrupt.gitDir, "index"), data);
    expect(await indexHasGitlink(corrupt.gitDir, 20)).toBeUndefined();

    const none = await repo();
    await rm(join(none.gitDir, "index"));
    expect(await indexHasGitlink(none.gitDir, 20)).toBeUndefined();
  });
});
