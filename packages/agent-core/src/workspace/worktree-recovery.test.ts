import { existsSync } from "node:fs";
import { readdir, readFile, realpath, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa, type ResultPromise } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";

const holder = fileURLToPath(new URL("./testing/hold-worktrees.ts", import.meta.url));
const repoRoot = fileURLToPath(new URL("../../../..", import.meta.url));
const running: ResultPromise[] = [];

afterEach(async () => {
  for (const child of running.splice(0)) await killed({ child }).catch(() => {});
});

/** A real node process that forks `branches` in `repo` and waits to be killed. */
// Helpers return the child inside an object: an async function returning the child itself would wait for it to exit.
async function holdWorktrees(repo: string, branches: string[]): Promise<{ child: ResultPromise }> {
  const child = execa(process.execPath, ["--import", "tsx", holder, JSON.stringify({ repo, branches })], { cwd: repoRoot, reject: false });
  running.push(child);
  await new Promise<void>((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      if (out.includes("ready")) resolve();
    });
    child.on("exit", () => reject(new Error(`holder exited early: ${String(child.stderr)}`)));
  });
  return { child };
}

/** A real `git commit -a` that holds `.git/index.lock` while its editor (a sleep) runs. */
async function gitHoldingIndexLock(repo: string): Promise<{ child: ResultPromise }> {
  await execa("sh", ["-c", "echo more >> README.md"], { cwd: repo });
  // Its own process group, so killing it takes the editor down too.
  const git = execa("git", ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qa"], {
    cwd: repo,
    reject: false,
    detached: true,
    stdio: "ignore",
    env: { GIT_EDITOR: "sleep 60;:" },
  });
  running.push(git);
  for (let i = 0; i < 250 && !existsSync(join(repo, ".git", "index.lock")); i++) await new Promise((resolve) => setTimeout(resolve, 20));
  expect(existsSync(join(repo, ".git", "index.lock"))).toBe(true);
  return { child: git };
}

async function killed({ child }: { child: ResultPromise }): Promise<void> {
  try {
    process.kill(-child.pid!, "SIGKILL");
  } catch {
    child.kill("SIGKILL");
  }
  await child;
}

const worktreeCount = async (repo: string) => (await execa("git", ["worktree", "list", "--porcelain"], { cwd: repo })).stdout.split("\n").filter((l) => l.startsWith("worktree ")).length;
const entries = async (dir: string) => readdir(dir).catch(() => [] as string[]);

describe("worktree recovery after a crash", () => {
  it("removes the worktrees and lock files of a SIGKILLed process, keeping its uncommitted work for the next fork", async () => {
    const repo = await createTestRepo();
    const holderProcess = await holdWorktrees(repo, ["summon-A", "summon-B", "summon-A-A"]);
    expect(await worktreeCount(repo)).toBe(4);
    const lock = await readFile(join(repo, ".git", "worktrees", "summon-A", "locked"), "utf8");
    expect(lock).toMatch(new RegExp(`^keen lease pid=${holderProcess.child.pid} `));
    await killed(holderProcess);
    await killed(await gitHoldingIndexLock(repo));
    expect(existsSync(join(repo, ".git", "index.lock"))).toBe(true);

    const ws = await LocalWorkspace.open(repo, { sandbox: false, recovery: { staleLockMs: 0 } });
    expect(await worktreeCount(repo)).toBe(1);
    expect(await entries(join(repo, ".git", "worktrees"))).toEqual([]);
    expect(await entries(join(repo, ".git", "keen", "worktrees"))).toEqual([]);
    expect(existsSync(join(repo, ".git", "index.lock"))).toBe(false);
    expect(ws.recovered.removedWorktrees).toHaveLength(3);
    expect(ws.recovered.removedLocks).toEqual([join(ws.root, ".git", "index.lock")]);
    expect(ws.recovered.salvagedBranches).toEqual(["summon-A"]);
    // git works again: the index is no longer locked.
    expect((await execa("git", ["status", "--porcelain"], { cwd: repo })).stdout).toBe(" M README.md");
    // Branches survive, and the next fork of summon-A gets its uncommitted file back.
    const branches = (await execa("git", ["branch", "--format=%(refname:short)"], { cwd: repo })).stdout.split("\n");
    expect(branches.sort()).toEqual(["main", "summon-A", "summon-A-A", "summon-B"]);
    await expect(ws.fork("summon-A")).rejects.toMatchObject({ code: "branch_exists" });
    const again = await ws.fork("summon-A", { reattach: true });
    expect(await again.readFile("wip.txt")).toBe("work in progress\n");
    expect((await execa("git", ["for-each-ref", "refs/keen/salvage"], { cwd: repo })).stdout).toBe("");
    await again.dispose();
  });

  it("keeps a live process's worktrees and a lock a live git process holds", async () => {
    const repo = await createTestRepo();
    const holderProcess = await holdWorktrees(repo, ["summon-A"]);
    const git = await gitHoldingIndexLock(repo);
    const ws = await LocalWorkspace.open(repo, { sandbox: false, recovery: { staleLockMs: 0 } });
    expect(ws.recovered).toEqual({ removedWorktrees: [], salvagedBranches: [], removedLocks: [] });
    expect(await worktreeCount(repo)).toBe(2);
    expect(existsSync(join(repo, ".git", "keen", "worktrees", "summon-A", "wip.txt"))).toBe(true);
    expect(existsSync(join(repo, ".git", "index.lock"))).toBe(true);
    // keen's own git calls say what is going on instead of git's generic "File exists".
    await ws.writeFile("mine.txt", "x\n");
    await expect(ws.commit("blocked")).rejects.toMatchObject({ code: "git_locked", message: expect.stringMatching(/a git process is working in this repository/) });
    // Once both are gone, the next open cleans up.
    await killed(git);
    await killed(holderProcess);
    const later = await LocalWorkspace.open(repo, { sandbox: false, recovery: { staleLockMs: 0 } });
    expect(later.recovered.removedWorktrees).toHaveLength(1);
    expect(await worktreeCount(repo)).toBe(1);
    expect(existsSync(join(repo, ".git", "index.lock"))).toBe(false);
  });

  it("clears a lock whose writer was killed at once on open, not after a wait", async () => {
    const repo = await createTestRepo();
    await killed(await gitHoldingIndexLock(repo));
    // Default options: no waiting period. The lock is young, but no git process is alive to own it.
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    expect(ws.recovered.removedLocks).toEqual([join(ws.root, ".git", "index.lock")]);
    await ws.writeFile("after.txt", "x\n");
    expect((await ws.commit("works at once")).sha).toMatch(/^[0-9a-f]{40}$/);
  });

  it("still leaves a lock younger than staleLockMs alone when asked to wait", async () => {
    const repo = await createTestRepo();
    await killed(await gitHoldingIndexLock(repo));
    const ws = await LocalWorkspace.open(repo, { sandbox: false, recovery: { staleLockMs: 60_000 } });
    expect(ws.recovered.removedLocks).toEqual([]);
    expect(existsSync(join(repo, ".git", "index.lock"))).toBe(true);
  });

  it("leaves no .git/worktrees entries after dispose, and no lease behind", async () => {
    const repo = await createTestRepo();
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    const forks = await Promise.all(["summon-A", "summon-B"].map((branch) => ws.fork(branch)));
    expect(await readFile(join(repo, ".git", "worktrees", "summon-B", "locked"), "utf8")).toMatch(new RegExp(`^keen lease pid=${process.pid} `));
    // A live lease keeps git's own prune away even when the folder is gone for a moment.
    await execa("git", ["worktree", "prune"], { cwd: repo });
    expect(await worktreeCount(repo)).toBe(3);
    await Promise.all(forks.map((fork) => fork.dispose()));
    expect(await entries(join(repo, ".git", "worktrees"))).toEqual([]);
    expect(await entries(join(repo, ".git", "keen", "worktrees"))).toEqual([]);
    expect(await worktreeCount(repo)).toBe(1);
  });

  it("removes the registration of a process killed between a removal's two steps (folder gone, registration left)", async () => {
    const repo = await createTestRepo();
    const holderProcess = await holdWorktrees(repo, ["summon-A", "summon-B"]);
    await killed(holderProcess);
    // A dispose deletes the folder first, then the registration: killed in between, this is what is left.
    const folder = join(await realpath(join(repo, ".git")), "keen", "worktrees", "summon-B");
    await rm(folder, { recursive: true });
    expect(await readFile(join(repo, ".git", "worktrees", "summon-B", "locked"), "utf8")).toMatch(/^keen lease /);
    // Locked with the dead process's lease: git's own prune leaves it.
    expect((await execa("git", ["worktree", "prune", "--dry-run", "--verbose"], { cwd: repo })).stdout).toBe("");
    expect(await worktreeCount(repo)).toBe(3);

    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    expect(ws.recovered.removedWorktrees.sort()).toEqual([join(dirname(folder), "summon-A"), folder]);
    expect(await worktreeCount(repo)).toBe(1);
    expect(await entries(join(repo, ".git", "worktrees"))).toEqual([]);
    expect((await execa("git", ["worktree", "prune", "--dry-run", "--verbose"], { cwd: repo })).stdout).toBe("");
    const branches = (await execa("git", ["branch", "--format=%(refname:short)"], { cwd: repo })).stdout.split("\n");
    expect(branches.sort()).toEqual(["main", "summon-A", "summon-B"]);
    const again = await ws.fork("summon-B", { reattach: true });
    expect(await again.readFile("README.md")).toBe("# test\n");
    await again.dispose();
    expect(await worktreeCount(repo)).toBe(1);
  });

  it("removes a worktree folder that git never registered", async () => {
    const repo = await createTestRepo();
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    const fork = await ws.fork("summon-A");
    // Simulate a crash that lost git's record of the worktree but left the folder.
    await execa("rm", ["-rf", join(repo, ".git", "worktrees")]);
    const again = await LocalWorkspace.open(repo, { sandbox: false });
    expect(again.recovered.removedWorktrees).toEqual([fork.root]);
    expect(existsSync(fork.root)).toBe(false);
  });
});
