import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { readHeadFromFiles } from "./read-head.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "./test-repo.js";

const git = async (dir: string, ...args: string[]) => (await execa("git", args, { cwd: dir, env: TEST_GIT_IDENTITY })).stdout.trim();

describe("readHeadFromFiles", () => {
  it("answers as git does for a loose branch, a packed branch and a detached HEAD", async () => {
    const dir = await createTestRepo();
    const gitDir = join(dir, ".git");
    const head = await git(dir, "rev-parse", "HEAD");
    expect(await readHeadFromFiles(gitDir, gitDir)).toBe(head);
    await git(dir, "pack-refs", "--all");
    expect(await readHeadFromFiles(gitDir, gitDir)).toBe(head);
    await git(dir, "checkout", "-q", "--detach");
    expect(await readHeadFromFiles(gitDir, gitDir)).toBe(head);
  });

  it("reads a linked worktree's HEAD from its own git dir and the branch from the common dir", async () => {
    const dir = await createTestRepo();
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-A");
    await child.writeFile("a.txt", "a\n");
    const { sha } = await child.commit("A");
    const common = join(dir, ".git");
    expect(await readHeadFromFiles(join(common, "worktrees", "summon-A"), common)).toBe(sha);
    expect(await readHeadFromFiles(common, common)).toBe(await git(dir, "rev-parse", "HEAD"));
    await child.dispose();
  });

  it("leaves to git what the files do not answer plainly: an unborn branch, a ref outside refs/heads, a path escape", async () => {
    const dir = await createTestRepo();
    const gitDir = join(dir, ".git");
    await git(dir, "checkout", "-q", "--orphan", "fresh");
    expect(await readHeadFromFiles(gitDir, gitDir)).toBeUndefined();
    await writeFile(join(gitDir, "HEAD"), "ref: refs/remotes/origin/main\n");
    expect(await readHeadFromFiles(gitDir, gitDir)).toBeUndefined();
    await mkdir(join(dir, "outside"), { recursive: true });
    await writeFile(join(dir, "outside", "x"), `${"a".repeat(40)}\n`);
    await writeFile(join(gitDir, "HEAD"), "ref: refs/heads/../../outside/x\n");
    expect(await readHeadFromFiles(gitDir, gitDir)).toBeUndefined();
    await writeFile(join(gitDir, "HEAD"), "garbage\n");
    expect(await readHeadFromFiles(gitDir, gitDir)).toBeUndefined();
  });
});

describe("fork's ref lookup", () => {
  it("sees packed refs when it refuses a clash", async () => {
    const dir = await createTestRepo();
    await git(dir, "branch", "packed/below");
    await git(dir, "branch", "flat");
    await git(dir, "pack-refs", "--all");
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    await expect(ws.fork("packed")).rejects.toMatchObject({ code: "branch_exists", message: expect.stringContaining("refs/heads/packed/below") });
    await expect(ws.fork("flat/child")).rejects.toMatchObject({ code: "branch_exists", message: expect.stringContaining("refs/heads/flat exists") });
    await expect(ws.fork("main")).rejects.toMatchObject({ code: "branch_exists" });
    const fresh = await ws.fork("packed-sibling/child");
    expect(await fresh.currentBranch()).toBe("packed-sibling/child");
    await fresh.dispose();
  });
});
