import { readdir } from "node:fs/promises";
import { join, relative } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "./test-repo.js";

const git = async (dir: string, ...args: string[]) => (await execa("git", args, { cwd: dir, env: TEST_GIT_IDENTITY, reject: false })).stdout.trim();

/** Every file on disk below `root`, except `.git`. */
async function filesOnDisk(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile())
    .map((entry) => relative(root, join(entry.parentPath ?? (entry as unknown as { path: string }).path, entry.name)))
    .filter((path) => path !== ".git" && !path.startsWith(".git/"))
    .sort();
}

const repoFiles = {
  "README.md": "# r\n",
  "src/dir-0/a.ts": "a\n",
  "src/dir-1/b.ts": "b\n",
  "src/dir-1/deep/c.ts": "c\n",
  "src/dir-10/d.ts": "d\n",
  "lit/a*b/e.txt": "e\n",
  "lit/aXb/f.txt": "f\n",
};

describe("fork with paths", () => {
  it("checks out only the named paths, refuses the rest by name, and commits and merges the whole tree", async () => {
    const dir = await createTestRepo(repoFiles);
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-A", { paths: ["src/dir-1/", "lit/a*b"] });
    expect(child.paths).toEqual(["lit/a*b", "src/dir-1"]);
    // `src/dir-10` shares a prefix and `lit/aXb` matches `a*b` as a glob: neither is checked out.
    expect(await filesOnDisk(child.root)).toEqual(["lit/a*b/e.txt", "src/dir-1/b.ts", "src/dir-1/deep/c.ts"]);
    expect(await child.listFiles()).toEqual(["lit/a*b/e.txt", "src/dir-1/b.ts", "src/dir-1/deep/c.ts"]);

    await expect(child.readFile("README.md")).rejects.toMatchObject({ code: "path_not_checked_out", message: expect.stringContaining("lit/a*b, src/dir-1") });
    await expect(child.readFile("src/dir-10/d.ts")).rejects.toMatchObject({ code: "path_not_checked_out" });
    await expect(child.writeFile("src/dir-0/new.ts", "x\n")).rejects.toMatchObject({ code: "path_not_checked_out" });
    await expect(child.exists("src/dir-0/a.ts")).rejects.toMatchObject({ code: "path_not_checked_out" });
    expect(await child.exists("src")).toBe(true);
    expect(await child.readFile("src/dir-1/b.ts")).toBe("b\n");

    await child.writeFile("src/dir-1/b.ts", "b2\n");
    await child.writeFile("src/dir-1/new.ts", "n\n");
    // A command may still write elsewhere: that file is committed too, not silently dropped.
    await child.exec("mkdir -p out && echo made > out/by-command.txt");
    const { sha } = await child.commit("Work in dir-1");
    expect(sha).not.toBeNull();
    const tree = (await git(dir, "ls-tree", "-r", "--name-only", "summon-A")).split("\n").sort();
    expect(tree).toEqual([...Object.keys(repoFiles), "out/by-command.txt", "src/dir-1/new.ts"].sort());

    expect(await ws.merge("summon-A", "Merge summon-A")).toMatchObject({ status: "merged" });
    expect(await filesOnDisk(dir)).toEqual([...Object.keys(repoFiles), "out/by-command.txt", "src/dir-1/new.ts"].sort());
    expect(await git(dir, "show", "HEAD:src/dir-1/b.ts")).toBe("b2");
    expect(await git(dir, "status", "--porcelain")).toBe("");
    // The repository's config is left alone: only keen's own git calls on the worktree set sparse mode.
    expect(await git(dir, "config", "--get", "core.sparseCheckout")).toBe("");
    await child.dispose();
  });

  it("merges children into a sparse parent together (mergeMany) as one by one: the paths only on disk, the whole tree committed", async () => {
    const dir = await createTestRepo(repoFiles);
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const parent = await ws.fork("summon-P", { paths: ["src/dir-1"] });
    // Children of the sparse parent: one writes inside the parent's paths, one outside them too.
    const inside = await parent.fork("summon-P-A", { paths: ["src/dir-1"] });
    await inside.writeFile("src/dir-1/b.ts", "b2\n");
    await inside.commit("Inside");
    const outside = await parent.fork("summon-P-B", { paths: ["src/dir-1"] });
    await outside.writeFile("src/dir-1/new.ts", "n\n");
    await outside.exec("mkdir -p out && echo made > out/by-command.txt");
    await outside.commit("Outside too");

    const merged = await parent.mergeMany([
      { branch: "summon-P-A", message: "Merge A" },
      { branch: "summon-P-B", message: "Merge B" },
    ]);
    expect(merged.map((m) => m.branch)).toEqual(["summon-P-A", "summon-P-B"]);
    expect(await parent.head()).toBe(merged[1]!.sha);
    // On disk: the parent's paths only, as after `merge`; in the commit: every file.
    expect(await filesOnDisk(parent.root)).toEqual(["src/dir-1/b.ts", "src/dir-1/deep/c.ts", "src/dir-1/new.ts"]);
    expect(await parent.readFile("src/dir-1/b.ts")).toBe("b2\n");
    const tree = (await git(dir, "ls-tree", "-r", "--name-only", "summon-P")).split("\n").sort();
    expect(tree).toEqual([...Object.keys(repoFiles), "out/by-command.txt", "src/dir-1/new.ts"].sort());
    // Nothing left to commit, and nothing outside the paths read as deleted.
    expect((await parent.commit("nothing")).sha).toBeNull();
    for (const fork of [inside, outside, parent]) await fork.dispose();
  });

  it("refuses paths that are not inside the checkout, and takes the root as the whole checkout", async () => {
    const dir = await createTestRepo(repoFiles);
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    for (const paths of [[], ["../x"], ["/etc"], [".git/config"], ["a\nb"], [""]]) {
      await expect(ws.fork("summon-bad", { paths })).rejects.toMatchObject({ code: "invalid_option" });
    }
    const whole = await ws.fork("summon-whole", { paths: ["src", "./"] });
    expect(whole.paths).toBeUndefined();
    expect(await filesOnDisk(whole.root)).toEqual(Object.keys(repoFiles).sort());
    await whole.dispose();
  });
});
