import { readdir, readFile, rm, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";
import { filesOnDisk, gitOutput, treeFiles } from "./testing/repo-files.js";

const git = gitOutput;
const tree = treeFiles;

const repoFiles = {
  "README.md": "# r\n",
  "src/a.ts": "a\n",
  "src/b.ts": "b\n",
  "lib/c.ts": "c\n",
};

/** Hands the worktree of `branch` to a process that has exited, as a crash leaves it. */
async function orphan(repo: string, branch: string): Promise<void> {
  const dead = execa("true");
  await dead;
  const name = (await readdir(join(repo, ".git", "worktrees"))).find((entry) => entry === branch || entry.startsWith(branch));
  await writeFile(join(repo, ".git", "worktrees", name!, "locked"), `keen lease pid=${dead.pid} start=- host=${hostname().replace(/\s+/g, "") || "-"}`);
}

describe("a sparse fork resumed after recovery removed its worktree", () => {
  it("comes back sparse, and neither the salvage nor the checkpoint restore deletes a file outside its paths", async () => {
    const dir = await createTestRepo(repoFiles);
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-A", { paths: ["src"] });
    await child.writeFile("src/a.ts", "a2\n");
    await child.checkpoint("run-1/A", "turn 0");
    await child.writeFile("src/new.ts", "written by the lost turn\n");
    await orphan(dir, "summon-A");

    const reopened = await LocalWorkspace.open(dir, { sandbox: false });
    expect(reopened.recovered.removedWorktrees).toHaveLength(1);
    const resumed = await reopened.fork("summon-A", { reattach: true, paths: ["src"] });
    expect(resumed.paths).toEqual(["src"]);
    expect(await filesOnDisk(resumed.root)).toEqual(["src/a.ts", "src/b.ts", "src/new.ts"]);

    expect((await resumed.restoreCheckpoint("run-1/A")).changed).toEqual(["src/new.ts"]);
    expect(await readFile(join(resumed.root, "src/a.ts"), "utf8")).toBe("a2\n");
    expect(await filesOnDisk(resumed.root)).toEqual(["src/a.ts", "src/b.ts"]);
    await resumed.commit("Work in src");
    expect(await tree(dir, "summon-A")).toEqual(Object.keys(repoFiles).sort());
    expect(await git(dir, "show", "summon-A:src/a.ts")).toBe("a2");
    expect(await reopened.merge("summon-A", "Merge summon-A")).toMatchObject({ status: "merged" });
    expect(await tree(dir, "HEAD")).toEqual(Object.keys(repoFiles).sort());
  });
});

describe("the checkpoint of a sparse fork", () => {
  it("keeps its label, and restored into a full checkout deletes nothing outside its paths even when it was staged from HEAD", async () => {
    const dir = await createTestRepo(repoFiles);
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-B", { paths: ["src"] });
    await child.writeFile("src/a.ts", "a2\n");
    // The worktree's index cannot be read for a moment: the checkpoint is staged from HEAD's tree,
    // where every file the sparse worktree does not hold looks deleted.
    const index = join(dir, ".git", "worktrees", "summon-B", "index");
    const saved = await readFile(index);
    await rm(index);
    expect((await child.checkpoint("run-1/B", "turn 3")).label).toBe("turn 3");
    await writeFile(index, saved);
    expect(await child.readCheckpoint("run-1/B")).toMatchObject({ label: "turn 3" });
    await child.writeFile("src/new.ts", "lost turn\n");
    await child.dispose();

    // Reattached without its paths (as a host that does not pass them would): a full checkout.
    const full = await ws.fork("summon-B", { reattach: true });
    expect(full.paths).toBeUndefined();
    await full.writeFile("src/new.ts", "lost turn\n");
    await full.writeFile("lib/extra.ts", "outside, added since\n");
    const { changed } = await full.restoreCheckpoint("run-1/B");
    expect(changed.sort()).toEqual(["src/a.ts", "src/new.ts"]);
    expect(await filesOnDisk(full.root)).toEqual(["README.md", "lib/c.ts", "lib/extra.ts", "src/a.ts", "src/b.ts"]);
    await full.commit("Work in src");
    expect(await tree(dir, "summon-B")).toEqual([...Object.keys(repoFiles), "lib/extra.ts"].sort());
  });
});

describe("a fork of a sparse worktree with includeUncommitted", () => {
  it("carries over the work inside its paths and deletes nothing outside them", async () => {
    const dir = await createTestRepo(repoFiles);
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-C", { paths: ["src"] });
    await child.writeFile("src/a.ts", "a2\n");
    await child.writeFile("src/new.ts", "n\n");
    const grandchild = await child.fork("summon-C-A", { includeUncommitted: true });
    expect(grandchild.lastForkReport?.included).toEqual(["src/a.ts", "src/new.ts"]);
    expect(await tree(dir, "summon-C-A")).toEqual([...Object.keys(repoFiles), "src/new.ts"].sort());
    expect(await git(dir, "show", "summon-C-A:src/a.ts")).toBe("a2");
  });
});
