import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, realpath, rename, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { removeWorktreeInProcess } from "./remove-worktree.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "./test-repo.js";

const git = async (cwd: string, ...args: string[]) => (await execa("git", args, { cwd, env: TEST_GIT_IDENTITY })).stdout.trim();
const worktreePaths = async (repo: string) =>
  (await git(repo, "worktree", "list", "--porcelain")).split("\n").filter((line) => line.startsWith("worktree ")).map((line) => line.slice(9));
/** What `git worktree prune` would drop (nothing, when every registration has its folder). */
const prunable = (repo: string) => git(repo, "worktree", "prune", "--dry-run", "--verbose");

/** A folder of the user's outside the repository, with a file in it and in a subfolder. */
async function userFolder(): Promise<string> {
  const dir = await realpath(await mkdtemp(join(tmpdir(), "keen-user-")));
  await mkdir(join(dir, "sub"));
  await writeFile(join(dir, "notes.txt"), "mine\n");
  await writeFile(join(dir, "sub", "deep.txt"), "mine too\n");
  return dir;
}

async function assertUserFolderIntact(dir: string): Promise<void> {
  expect(await readFile(join(dir, "notes.txt"), "utf8")).toBe("mine\n");
  expect(await readFile(join(dir, "sub", "deep.txt"), "utf8")).toBe("mine too\n");
}

/** The main checkout still works: its files, index, HEAD and objects as before. */
async function assertMainIntact(repo: string, head: string): Promise<void> {
  expect(await readFile(join(repo, "README.md"), "utf8")).toBe("# test\n");
  expect(await git(repo, "rev-parse", "HEAD")).toBe(head);
  expect(await git(repo, "status", "--porcelain")).toBe("");
  expect(await git(repo, "fsck", "--no-progress")).toBe("");
}

describe("dispose removes the worktree in this process", () => {
  it("leaves no folder and no registration, and keeps the branch", async () => {
    const repo = await createTestRepo();
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    const child = await ws.fork("summon-A");
    await child.writeFile("src/a.ts", "export const a = 1;\n");
    const sha = (await child.commit("Add a")).sha;
    await child.writeFile("scratch.txt", "never committed\n");
    const root = child.root;
    await child.dispose();

    expect(existsSync(root)).toBe(false);
    expect(await worktreePaths(repo)).toEqual([await realpath(repo)]);
    expect(await prunable(repo)).toBe("");
    // Git drops `<common>/worktrees` with the last registration; so does keen.
    expect(existsSync(join(repo, ".git", "worktrees"))).toBe(false);
    expect(await git(repo, "rev-parse", "summon-A")).toBe(sha);
    // The branch is held by no worktree: git checks it out elsewhere, and keen forks it again.
    const again = await ws.fork("summon-A", { reattach: true });
    expect(await again.readFile("src/a.ts")).toBe("export const a = 1;\n");
    await again.dispose();
    expect(await worktreePaths(repo)).toEqual([await realpath(repo)]);
  });

  it("leaves the other worktrees' registrations alone", async () => {
    const repo = await createTestRepo();
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    const [a, b] = await Promise.all([ws.fork("summon-A"), ws.fork("summon-B")]);
    await a.dispose();
    expect(await worktreePaths(repo)).toEqual([await realpath(repo), b.root]);
    expect(await readdir(join(repo, ".git", "worktrees"))).toEqual(["summon-B"]);
    await b.writeFile("b.txt", "b\n");
    expect((await b.commit("b")).sha).toMatch(/^[0-9a-f]{40}$/);
    await b.dispose();
  });
});

describe("an agent cannot steer the removal elsewhere", () => {
  it("a .git file rewritten to name another worktree's git dir: only this worktree goes", async () => {
    const repo = await createTestRepo();
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    const [a, b] = await Promise.all([ws.fork("summon-A"), ws.fork("summon-B")]);
    await b.writeFile("b.txt", "b\n");
    const bGitDir = join(await realpath(join(repo, ".git")), "worktrees", "summon-B");
    const bLease = await readFile(join(bGitDir, "locked"), "utf8");
    await writeFile(join(a.root, ".git"), `gitdir: ${bGitDir}\n`);
    await a.dispose();

    expect(existsSync(a.root)).toBe(false);
    expect(await worktreePaths(repo)).toEqual([await realpath(repo), b.root]);
    expect(await readFile(join(bGitDir, "locked"), "utf8")).toBe(bLease);
    expect(await readFile(join(bGitDir, "gitdir"), "utf8")).toBe(`${join(b.root, ".git")}\n`);
    expect(await readFile(join(b.root, "b.txt"), "utf8")).toBe("b\n");
    expect((await b.commit("b")).sha).toMatch(/^[0-9a-f]{40}$/);
    await b.dispose();
    expect(await worktreePaths(repo)).toEqual([await realpath(repo)]);
  });

  it("a .git file rewritten to name the main repository's git dir: the repository is untouched", async () => {
    const repo = await createTestRepo();
    const head = await git(repo, "rev-parse", "HEAD");
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    const child = await ws.fork("summon-A");
    await writeFile(join(child.root, ".git"), `gitdir: ${await realpath(join(repo, ".git"))}\n`);
    await child.dispose();

    expect(existsSync(child.root)).toBe(false);
    expect(await worktreePaths(repo)).toEqual([await realpath(repo)]);
    await assertMainIntact(repo, head);
    expect(await git(repo, "rev-parse", "summon-A")).toBe(head);
  });

  it("symbolic links inside the worktree to the user's folder, the main checkout and a file are unlinked, not followed", async () => {
    const repo = await createTestRepo();
    const head = await git(repo, "rev-parse", "HEAD");
    const user = await userFolder();
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    const child = await ws.fork("summon-A");
    await mkdir(join(child.root, "deep", "er"), { recursive: true });
    await symlink(user, join(child.root, "to-user"));
    await symlink(join(user, "sub"), join(child.root, "deep", "er", "to-user-sub"));
    await symlink(await realpath(repo), join(child.root, "deep", "to-main"));
    await symlink("../../../../../..", join(child.root, "deep", "er", "up"));
    await symlink(join(user, "notes.txt"), join(child.root, "file-link"));
    // Enough files that the folder is deleted off the main thread.
    for (let i = 0; i < 200; i++) await writeFile(join(child.root, "deep", `f${i}.txt`), "x\n");
    await child.dispose();

    expect(existsSync(child.root)).toBe(false);
    await assertUserFolderIntact(user);
    await assertMainIntact(repo, head);
    expect(await worktreePaths(repo)).toEqual([await realpath(repo)]);
  });

  it("a worktree folder replaced by a link to the user's folder: only the link goes", async () => {
    const repo = await createTestRepo();
    const user = await userFolder();
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    const child = await ws.fork("summon-A");
    await rm(child.root, { recursive: true });
    await symlink(user, child.root);
    await child.dispose();

    expect(existsSync(child.root)).toBe(false);
    await assertUserFolderIntact(user);
    expect(await worktreePaths(repo)).toEqual([await realpath(repo)]);
    expect(await prunable(repo)).toBe("");
  });

  it("a worktree folder replaced by a link to another worktree: the other keeps its files and registration", async () => {
    const repo = await createTestRepo();
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    const [a, b] = await Promise.all([ws.fork("summon-A"), ws.fork("summon-B")]);
    await b.writeFile("b.txt", "b\n");
    await rename(a.root, `${a.root}.moved`);
    await symlink(b.root, a.root);
    await a.dispose();

    expect(existsSync(a.root)).toBe(false);
    expect(await readFile(join(b.root, "b.txt"), "utf8")).toBe("b\n");
    expect(await worktreePaths(repo)).toEqual([await realpath(repo), b.root]);
    expect((await b.commit("b")).sha).toMatch(/^[0-9a-f]{40}$/);
    await b.dispose();
    await rm(`${a.root}.moved`, { recursive: true });
  });
});

describe("removeWorktreeInProcess refuses what is not a keen worktree", () => {
  async function setup() {
    const repo = await createTestRepo();
    const head = await git(repo, "rev-parse", "HEAD");
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    const child = await ws.fork("summon-A");
    const commonDir = await realpath(join(repo, ".git"));
    const worktreesDir = join(commonDir, "keen", "worktrees");
    const gitDir = join(commonDir, "worktrees", "summon-A");
    return { repo, head, child, commonDir, worktreesDir, gitDir };
  }

  it("the main checkout, a user's folder, keen's worktrees folder itself: refused, nothing removed", async () => {
    const { repo, head, child, commonDir, worktreesDir, gitDir } = await setup();
    const user = await userFolder();
    for (const root of [await realpath(repo), user, worktreesDir, join(worktreesDir, "..", "x")]) {
      await expect(removeWorktreeInProcess({ commonDir, worktreesDir, root, gitDir })).rejects.toMatchObject({ code: "not_a_keen_worktree" });
    }
    // A git dir that is not a registration of this repository.
    await expect(removeWorktreeInProcess({ commonDir, worktreesDir, root: child.root, gitDir: commonDir })).rejects.toMatchObject({ code: "not_a_keen_worktree" });
    await assertMainIntact(repo, head);
    await assertUserFolderIntact(user);
    expect(await worktreePaths(repo)).toEqual([await realpath(repo), child.root]);
    await child.dispose();
  });

  it("a folder whose parent leads out of the worktrees folder: refused", async () => {
    const { child, commonDir, worktreesDir, gitDir } = await setup();
    const user = await userFolder();
    await symlink(user, join(worktreesDir, "evil"));
    await expect(removeWorktreeInProcess({ commonDir, worktreesDir, root: join(worktreesDir, "evil", "sub"), gitDir })).rejects.toMatchObject({ code: "not_a_keen_worktree" });
    await assertUserFolderIntact(user);
    await rm(join(worktreesDir, "evil"));
    await child.dispose();
  });

  it("a registration that names another folder: false, nothing removed (git decides)", async () => {
    const { repo, child, commonDir, worktreesDir } = await setup();
    const other = await ws2(repo);
    const otherGitDir = join(commonDir, "worktrees", "summon-B");
    expect(await removeWorktreeInProcess({ commonDir, worktreesDir, root: child.root, gitDir: otherGitDir })).toBe(false);
    expect(existsSync(join(child.root, "README.md"))).toBe(true);
    expect(existsSync(join(other.root, "README.md"))).toBe(true);
    expect(await worktreePaths(repo)).toEqual([await realpath(repo), child.root, other.root]);
    await Promise.all([child.dispose(), other.dispose()]);
  });
});

async function ws2(repo: string): Promise<LocalWorkspace> {
  return (await LocalWorkspace.open(repo, { sandbox: false, recovery: false })).fork("summon-B");
}
