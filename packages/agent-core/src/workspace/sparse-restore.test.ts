import { readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";
import { filesOnDisk, gitOutput, treeFiles } from "./testing/repo-files.js";

const git = gitOutput;
const tree = treeFiles;

const read = (root: string, path: string) => readFile(join(root, path), "utf8");

const repoFiles = { "README.md": "# r\n", "src/a.ts": "a\n", "lib/c.ts": "c\n" };

/** A sparse fork on `src` whose commands wrote outside it, before and after a checkpoint. */
async function sparseForkWithOutsideWrites(branch: string) {
  const dir = await createTestRepo(repoFiles);
  const ws = await LocalWorkspace.open(dir, { sandbox: false });
  const child = await ws.fork(branch, { paths: ["src"] });
  // Tracked outside the paths, present on disk: written by a command and committed.
  await child.exec("mkdir -p dist && echo tracked > dist/tracked.txt");
  const { sha } = await child.commit("Build output");
  expect(sha).not.toBeNull();
  await child.writeFile("src/a.ts", "a2\n");
  // Untracked outside the paths when the checkpoint is taken, then changed.
  await child.exec("mkdir -p notes && echo v1 > notes/x.md");
  await child.checkpoint("run-1/A", "turn 1");
  await child.exec("echo v2 > notes/x.md && echo late > notes/late.md && rm dist/tracked.txt && mkdir -p out && echo o > out/new.txt");
  await child.writeFile("src/a.ts", "a3\n");
  await child.writeFile("src/new.ts", "n\n");
  return { dir, ws, child, commit: sha! };
}

describe("restoring a sparse fork whose commands wrote outside its paths", () => {
  it("puts back its paths exactly and deletes no file outside them (restoreCheckpoint)", async () => {
    const { child } = await sparseForkWithOutsideWrites("summon-R");
    expect((await child.restoreCheckpoint("run-1/A")).changed.sort()).toEqual(["dist/tracked.txt", "notes/x.md", "src/a.ts", "src/new.ts"]);
    expect(await filesOnDisk(child.root)).toEqual(["dist/tracked.txt", "notes/late.md", "notes/x.md", "out/new.txt", "src/a.ts"]);
    expect(await read(child.root, "src/a.ts")).toBe("a2\n");
    // What the checkpoint saw outside the paths comes back as it saw it; what it did not see stays.
    expect(await read(child.root, "notes/x.md")).toBe("v1\n");
    expect(await read(child.root, "dist/tracked.txt")).toBe("tracked\n");
    expect(await read(child.root, "notes/late.md")).toBe("late\n");
    expect(await read(child.root, "out/new.txt")).toBe("o\n");
  });

  it("puts back its paths exactly and deletes no file outside them (restoreFilesOf)", async () => {
    const { child, commit } = await sparseForkWithOutsideWrites("summon-F");
    await child.restoreFilesOf(commit);
    expect(await filesOnDisk(child.root)).toEqual(["dist/tracked.txt", "notes/late.md", "notes/x.md", "out/new.txt", "src/a.ts"]);
    expect(await read(child.root, "src/a.ts")).toBe("a\n");
    expect(await read(child.root, "dist/tracked.txt")).toBe("tracked\n");
    expect(await read(child.root, "notes/x.md")).toBe("v2\n");
  });

  it("keeps a file written outside the paths only after the checkpoint", async () => {
    const dir = await createTestRepo(repoFiles);
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-L", { paths: ["src"] });
    await child.checkpoint("run-1/L", "turn 0");
    await child.exec("mkdir -p dist && echo built > dist/out.txt");
    await child.writeFile("src/new.ts", "n\n");
    expect((await child.restoreCheckpoint("run-1/L")).changed).toEqual(["src/new.ts"]);
    expect(await filesOnDisk(child.root)).toEqual(["dist/out.txt", "src/a.ts"]);
    expect(await read(child.root, "dist/out.txt")).toBe("built\n");
  });

  it("commits what commands wrote outside the paths, a rewrite of a file it does not hold included", async () => {
    const dir = await createTestRepo(repoFiles);
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-C", { paths: ["src"] });
    await child.exec("mkdir -p lib dist && echo c2 > lib/c.ts && echo built > dist/out.txt");
    await child.checkpoint("run-1/C", "turn 0");
    await child.exec("echo c3 > lib/c.ts");
    await child.restoreCheckpoint("run-1/C");
    expect(await read(child.root, "lib/c.ts")).toBe("c2\n");
    expect(await filesOnDisk(child.root)).toEqual(["dist/out.txt", "lib/c.ts", "src/a.ts"]);
    await child.commit("Outside writes");
    expect(await tree(dir, "summon-C")).toEqual([...Object.keys(repoFiles), "dist/out.txt"].sort());
    expect(await git(dir, "show", "summon-C:lib/c.ts")).toBe("c2");
  });

  it("commits the removal of a file outside the paths that a command deleted", async () => {
    const dir = await createTestRepo(repoFiles);
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-D", { paths: ["src"] });
    await child.exec("mkdir -p dist && echo built > dist/out.txt");
    await child.commit("Build output");
    await child.exec("rm dist/out.txt");
    await child.writeFile("src/a.ts", "a2\n");
    expect((await child.commit("Clean build output")).sha).not.toBeNull();
    expect(await tree(dir, "summon-D")).toEqual(Object.keys(repoFiles).sort());
    expect(await git(dir, "show", "summon-D:src/a.ts")).toBe("a2");
  });

  it("restores while its index cannot be read, and writes out no file it does not hold", async () => {
    const dir = await createTestRepo(repoFiles);
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    // A checkpoint of a full checkout that changed a file outside the sparse fork's paths.
    const full = await ws.fork("summon-W", {});
    await full.writeFile("lib/c.ts", "c9\n");
    await full.writeFile("src/a.ts", "a9\n");
    await full.checkpoint("run-1/W", "full");
    const child = await ws.fork("summon-S", { paths: ["src"] });
    expect((await child.restoreCheckpoint("run-1/W")).changed).toEqual(["src/a.ts"]);
    expect(await filesOnDisk(child.root)).toEqual(["src/a.ts"]);
    expect(await read(child.root, "src/a.ts")).toBe("a9\n");

    await child.exec("mkdir -p dist && echo built > dist/out.txt");

    await child.checkpoint("run-1/S", "sparse");
    await child.writeFile("src/new.ts", "n\n");
    const index = join(dir, ".git", "worktrees", "summon-S", "index");
    const saved = await readFile(index);
    await rm(index);
    try {
      expect((await child.restoreCheckpoint("run-1/S")).changed).toEqual(["src/new.ts"]);
    } finally {
      await writeFile(index, saved);
    }
    expect(await filesOnDisk(child.root)).toEqual(["dist/out.txt", "src/a.ts"]);
  });

  it("carries into a fork with includeUncommitted what commands wrote and deleted outside the paths", async () => {
    const dir = await createTestRepo(repoFiles);
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-U", { paths: ["src"] });
    await child.exec("mkdir -p dist && echo built > dist/out.txt && echo keep > dist/keep.txt");
    await child.commit("Build output");
    await child.exec("rm dist/out.txt && echo k2 > dist/keep.txt && mkdir -p lib && echo c2 > lib/c.ts && echo n > dist/new.txt");
    const grandchild = await child.fork("summon-U-A", { includeUncommitted: true });
    expect(grandchild.lastForkReport?.included).toEqual(["dist/keep.txt", "dist/new.txt", "dist/out.txt", "lib/c.ts"]);
    expect(await tree(dir, "summon-U-A")).toEqual(["README.md", "dist/keep.txt", "dist/new.txt", "lib/c.ts", "src/a.ts"]);
    expect(await git(dir, "show", "summon-U-A:lib/c.ts")).toBe("c2");
  });
});
