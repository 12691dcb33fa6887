import { mkdir, readdir, realpath, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { addWorktree } from "./add-worktree.js";
import { parseWorktreeList } from "./worktree-recovery.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "./test-repo.js";

const git = async (dir: string, ...args: string[]) => (await execa("git", args, { cwd: dir, env: TEST_GIT_IDENTITY })).stdout;

describe("addWorktree", () => {
  it("registers a worktree git itself lists, locked with the reason, on a new branch, and checks it out with reset", async () => {
    const repo = await realpath(await createTestRepo({ "README.md": "# r\n", "src/a.ts": "export const a = 1;\n" }));
    const commonDir = join(repo, ".git");
    const head = (await git(repo, "rev-parse", "HEAD")).trim();
    const dir = join(commonDir, "keen", "worktrees", "keen", "run-1");
    await addWorktree({ commonDir, main: { gitDir: commonDir, workTree: repo }, dir, branch: "keen/run-1", commit: head, lockReason: "keen lease pid=1 start=2 host=h" });

    const listed = parseWorktreeList(await git(repo, "worktree", "list", "--porcelain", "-z"), "\0");
    expect(listed.find((entry) => entry.path === dir)).toEqual({ path: dir, branch: "keen/run-1", locked: "keen lease pid=1 start=2 host=h" });
    expect((await git(repo, "rev-parse", "keen/run-1")).trim()).toBe(head);
    await git(dir, "reset", "-q", "--hard");
    expect((await readdir(dir)).sort()).toEqual([".git", "README.md", "src"]);
    expect((await git(dir, "status", "--porcelain")).trim()).toBe("");
    expect((await git(dir, "symbolic-ref", "HEAD")).trim()).toBe("refs/heads/keen/run-1");
    // The user's checkout is where it was.
    expect((await git(repo, "symbolic-ref", "--short", "HEAD")).trim()).toBe("main");

    // A second worktree whose folder has the same name gets its own registration.
    const other = join(commonDir, "keen", "worktrees", "other", "run-1");
    await addWorktree({ commonDir, main: { gitDir: commonDir, workTree: repo }, dir: other, branch: "other/run-1", commit: head, lockReason: "r" });
    expect((await readdir(join(commonDir, "worktrees"))).sort()).toEqual(["run-1", "run-11"]);
    await git(repo, "worktree", "remove", "--force", "--force", other);
    expect(parseWorktreeList(await git(repo, "worktree", "list", "--porcelain", "-z"), "\0").map((entry) => entry.path)).toEqual([repo, dir]);
  });

  it("never takes an existing branch or a folder with files, and leaves nothing behind", async () => {
    const repo = await realpath(await createTestRepo({ "README.md": "# r\n" }));
    const commonDir = join(repo, ".git");
    const head = (await git(repo, "rev-parse", "HEAD")).trim();
    const main = { gitDir: commonDir, workTree: repo };
    await expect(addWorktree({ commonDir, main, dir: join(repo, "..", "wt-main"), branch: "main", commit: head, lockReason: "r" })).rejects.toMatchObject({ code: "branch_exists" });
    const full = join(commonDir, "keen", "full");
    await mkdir(full, { recursive: true });
    await writeFile(join(full, "x"), "x");
    await expect(addWorktree({ commonDir, main, dir: full, branch: "new", commit: head, lockReason: "r" })).rejects.toMatchObject({ code: "git_failed" });
    expect((await git(repo, "branch", "--format=%(refname:short)")).trim()).toBe("main");
    expect(await readdir(join(commonDir, "worktrees")).catch(() => [])).toEqual([]);
  });
});
