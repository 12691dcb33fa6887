import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa, type ResultPromise } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "./test-repo.js";

const holder = fileURLToPath(new URL("./testing/hold-worktrees.ts", import.meta.url));
const repoRoot = fileURLToPath(new URL("../../../..", import.meta.url));
const running: ResultPromise[] = [];
afterEach(async () => {
  for (const child of running.splice(0)) {
    child.kill("SIGKILL");
    await child;
  }
});

/** A real second keen process holding worktrees (and optionally the repository lock). */
// Returned inside an object: an async function returning the child itself would wait for it to exit.
async function holdInOtherProcess(repo: string, branches: string[], holdRepoLock = false): Promise<{ child: ResultPromise }> {
  const child = execa(process.execPath, ["--import", "tsx", holder, JSON.stringify({ repo, branches, holdRepoLock })], { cwd: repoRoot, reject: false });
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

const git = async (dir: string, ...args: string[]) => (await execa("git", args, { cwd: dir })).stdout;

/** Every byte of the user's checkout that keen must leave alone: files, index, HEAD, stash, status. */
function checkoutState(dir: string): Record<string, string> {
  const state: Record<string, string> = {};
  const walk = (folder: string) => {
    for (const entry of readdirSync(folder, { withFileTypes: true })) {
      const path = join(folder, entry.name);
      if (entry.name === ".git") continue;
      if (entry.isDirectory()) walk(path);
      else state[path] = createHash("sha256").update(readFileSync(path)).digest("hex");
    }
  };
  walk(dir);
  state.index = createHash("sha256").update(readFileSync(join(dir, ".git", "index"))).digest("hex");
  state.indexMtime = String(statSync(join(dir, ".git", "index")).mtimeMs);
  state.HEAD = readFileSync(join(dir, ".git", "HEAD"), "utf8");
  state.status = execFileSync("git", ["status", "--porcelain", "--untracked-files=all"], { cwd: dir, encoding: "utf8", env: { ...process.env, GIT_OPTIONAL_LOCKS: "0" } });
  state.stash = execFileSync("git", ["stash", "list"], { cwd: dir, encoding: "utf8" });
  state.main = execFileSync("git", ["rev-parse", "main"], { cwd: dir, encoding: "utf8" });
  return state;
}

describe("commit never commits what keen must not", () => {
  it("leaves out credentials, oversized files, keen's temp files and FIFOs, and reports them", async () => {
    const dir = await createTestRepo();
    const ws = await LocalWorkspace.open(dir, { sandbox: false, maxFileBytes: 1024 * 1024 });
    const child = await ws.fork("keen/aaaa0001");
    await child.writeFile("src/ok.ts", "export const ok = 1;\n");
    await child.writeFile(".env.local", "API_KEY=abc\n");
    await child.writeFile("deploy/id_rsa", "not really\n");
    await child.writeFile("certs/server.pem", "x\n");
    await child.writeFile("config/settings.json", `{ "key": "-----BEGIN RSA PRIVATE KEY-----\\nMIIE" }\n`);
    await child.writeFile("notes/token.txt", "token sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123\n");
    await child.writeFile("big.bin", "x".repeat(1024 * 1024 + 1));
    await writeFile(join(child.root, "src", ".keen-0123abcd4567.tmp"), "half written");
    execFileSync("mkfifo", [join(child.root, "pipe")]);
    const { sha, skipped } = await child.commit("work");
    const committed = (await git(dir, "ls-tree", "-r", "--name-only", sha!)).split("\n");
    expect(committed.sort()).toEqual(["README.md", "src/ok.ts"]);
    expect(skipped.map(({ path, reason }) => ({ path, reason })).sort((a, b) => a.path.localeCompare(b.path))).toEqual([
      { path: ".env.local", reason: "credential" },
      { path: "big.bin", reason: "too_large" },
      { path: "certs/server.pem", reason: "credential" },
      { path: "config/settings.json", reason: "credential" },
      { path: "deploy/id_rsa", reason: "credential" },
      { path: "notes/token.txt", reason: "credential" },
      { path: "src/.keen-0123abcd4567.tmp", reason: "temp_file" },
    ]);
    // Left in place, uncommitted; nothing more to commit next time but the same report.
    expect(await readFile(join(child.root, ".env.local"), "utf8")).toBe("API_KEY=abc\n");
    expect(await child.commit("again")).toMatchObject({ sha: null });
  });

  it("defaults to a 5 MB limit", async () => {
    const dir = await createTestRepo();
    const child = await (await LocalWorkspace.open(dir, { sandbox: false })).fork("keen/aaaa0002");
    await child.writeFile("four.txt", "y".repeat(4 * 1024 * 1024));
    await child.writeFile("six.txt", "y".repeat(6 * 1024 * 1024));
    const { skipped } = await child.commit("sizes");
    expect(skipped.map((file) => file.path)).toEqual(["six.txt"]);
  });
});

describe("fork", () => {
  it("refuses an existing branch and a name that clashes with a ref as file or folder", async () => {
    const dir = await createTestRepo();
    await git(dir, "branch", "summon-A/old");
    await git(dir, "branch", "taken");
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    await expect(ws.fork("summon-A")).rejects.toMatchObject({ code: "branch_exists" });
    await expect(ws.fork("taken")).rejects.toMatchObject({ code: "branch_exists" });
    await expect(ws.fork("taken/child")).rejects.toMatchObject({ code: "branch_exists" });
    await expect(ws.fork("bad..name")).rejects.toMatchObject({ code: "invalid_branch" });
    // Beside the clash works: the run's children live at `<run>-agents/…`.
    const child = await ws.fork("keen/0a1b2c3d-agents/summon-A");
    expect(await child.currentBranch()).toBe("keen/0a1b2c3d-agents/summon-A");
    const sibling = await ws.fork("keen/0a1b2c3d");
    expect(await sibling.currentBranch()).toBe("keen/0a1b2c3d");
  });

  it("creates the branch fresh at `from`", async () => {
    const dir = await createTestRepo();
    const first = await git(dir, "rev-parse", "HEAD");
    await writeFile(join(dir, "later.txt"), "later\n");
    await git(dir, "add", "later.txt");
    await execa("git", ["commit", "-qm", "later"], { cwd: dir, env: TEST_GIT_IDENTITY });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("keen/from0001", { from: first });
    expect(await child.head()).toBe(first);
    await expect(ws.fork("keen/from0002", { from: "no-such-ref" })).rejects.toMatchObject({ code: "invalid_ref" });
  });

  it("refuses a worktree another live keen process holds, and its branch name (a real second process)", async () => {
    const dir = await createTestRepo();
    await holdInOtherProcess(dir, ["summon-A"]);
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    await expect(ws.fork("summon-A")).rejects.toMatchObject({ code: "branch_exists" });
    await expect(ws.fork("summon-A", { reattach: true })).rejects.toMatchObject({ code: "worktree_in_use" });
    // The other process's uncommitted work is untouched.
    expect(await readFile(join(dir, ".git", "keen", "worktrees", "summon-A", "wip.txt"), "utf8")).toBe("work in progress\n");
  });

  it("waits for the repository lock another live process holds, and takes it over once that process dies", async () => {
    const dir = await createTestRepo();
    const { child: other } = await holdInOtherProcess(dir, [], true);
    const ws = await LocalWorkspace.open(dir, { sandbox: false, recovery: false });
    let done = false;
    const pending = ws.fork("keen/lock0001").then((child) => {
      done = true;
      return child;
    });
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(done).toBe(false);
    other.kill("SIGKILL");
    await other;
    const child = await pending;
    expect(await child.currentBranch()).toBe("keen/lock0001");
  });

  it("never changes the user's working tree, index, stash or branch; includeUncommitted copies their work without credentials", async () => {
    const dir = await createTestRepo({ "README.md": "# base\n", "src/app.ts": "export const a = 1;\n" });
    await writeFile(join(dir, "README.md"), "# base, edited by the user\n");
    await writeFile(join(dir, ".env.local"), "ANTHROPIC_API_KEY=sk-ant-user-secret-0123456789abcdef\n");
    await writeFile(join(dir, "notes.md"), "user notes\n");
    await writeFile(join(dir, ".gitignore"), "ignored.log\n");
    await writeFile(join(dir, "ignored.log"), "log\n");
    await rm(join(dir, "src", "app.ts"));
    const before = checkoutState(dir);

    const ws = await LocalWorkspace.open(dir);
    const plain = await ws.fork("keen/safe0001");
    expect(await plain.readFile("README.md")).toBe("# base\n");
    expect(await plain.exists(".env.local")).toBe(false);
    await plain.writeFile("agent.txt", "agent\n");
    expect((await plain.commit("agent work")).sha).toMatch(/^[0-9a-f]{40}$/);

    const carried = await ws.fork("keen/safe0002", { includeUncommitted: true });
    expect(carried.lastForkReport).toEqual({
      included: [".gitignore", "README.md", "notes.md", "src/app.ts"],
      skipped: [{ path: ".env.local", reason: "credential", detail: expect.any(String) }],
    });
    expect(await carried.readFile("README.md")).toBe("# base, edited by the user\n");
    expect(await carried.readFile("notes.md")).toBe("user notes\n");
    expect(await carried.exists("src/app.ts")).toBe(false);
    expect(await carried.exists(".env.local")).toBe(false);
    expect(await carried.exists("ignored.log")).toBe(false);
    expect(await git(carried.root, "log", "-1", "--format=%s")).toBe("keen: uncommitted work carried into keen/safe0002");
    expect(await git(carried.root, "status", "--porcelain")).toBe("");
    // Merges happen in worktrees, never in the user's checkout.
    expect(await carried.merge("keen/safe0001", "Merge agent work")).toMatchObject({ status: "merged" });
    await plain.dispose();
    await carried.dispose();
    await LocalWorkspace.open(dir);

    expect(checkoutState(dir)).toEqual(before);
    expect(await ws.currentBranch()).toBe("main");
  });

  it("leaves a temp file of an interrupted write out of the salvage and removes it on recovery", async () => {
    const dir = await createTestRepo();
    const { child: other } = await holdInOtherProcess(dir, ["summon-A"]);
    const worktree = join(dir, ".git", "keen", "worktrees", "summon-A");
    await writeFile(join(worktree, ".keen-00ff00ff00ff.tmp"), "half");
    other.kill("SIGKILL");
    await other;
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    expect(ws.recovered.salvagedBranches).toEqual(["summon-A"]);
    const salvage = await git(dir, "ls-tree", "-r", "--name-only", "refs/keen/salvage/summon-A");
    expect(salvage.split("\n").sort()).toEqual(["README.md", "wip.txt"]);
    const again = await ws.fork("summon-A", { reattach: true });
    expect(await again.readFile("wip.txt")).toBe("work in progress\n");
    expect(readdirSync(again.root).filter((name) => name.endsWith(".tmp"))).toEqual([]);
  });
});

describe("commitMerge reads resolutions without following links or opening special files", () => {
  async function conflicted(): Promise<{ dir: string; ws: LocalWorkspace; parent: LocalWorkspace }> {
    const dir = await createTestRepo({ "shared.txt": "base\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const parent = await ws.fork("keen/merge0001");
    const child = await ws.fork("keen/merge0001-agents/summon-A");
    await child.writeFile("shared.txt", "child\n");
    await child.commit("child");
    await parent.writeFile("shared.txt", "parent\n");
    await parent.commit("parent");
    expect(await parent.merge("keen/merge0001-agents/summon-A", "merge")).toMatchObject({ status: "conflict" });
    return { dir, ws, parent };
  }

  it("refuses a FIFO in place of the conflicted file at once", async () => {
    const { parent } = await conflicted();
    await rm(join(parent.root, "shared.txt"));
    execFileSync("mkfifo", [join(parent.root, "shared.txt")]);
    await expect(parent.commitMerge("resolved?")).rejects.toMatchObject({ code: "merge_unresolved", message: expect.stringMatching(/not a regular file/) });
  });

  it("never reads through a symlink: /dev/zero costs nothing, and an outside file's markers change nothing", async () => {
    const outside = await mkdtemp(join(tmpdir(), "keen-outside-"));
    await writeFile(join(outside, "with-markers.txt"), "<<<<<<< HEAD\nsecret\n=======\nother\n>>>>>>> x\n");
    await writeFile(join(outside, "plain.txt"), "plain\n");
    const outcomes: string[] = [];
    for (const target of ["/dev/zero", join(outside, "with-markers.txt"), join(outside, "plain.txt")]) {
      const { parent } = await conflicted();
      await rm(join(parent.root, "shared.txt"));
      await symlink(target, join(parent.root, "shared.txt"));
      const before = process.memoryUsage().rss;
      const sha = await parent.commitMerge("resolved as a link");
      expect(process.memoryUsage().rss - before).toBeLessThan(50 * 1024 * 1024);
      // git records the link itself, never the target's content.
      expect(await git(parent.root, "cat-file", "-p", `${sha}:shared.txt`)).toBe(target);
      outcomes.push("merged");
    }
    expect(outcomes).toEqual(["merged", "merged", "merged"]);
  });

  it("refuses a resolution whose folder is a symlink leading elsewhere", async () => {
    const dir = await createTestRepo({ "sub/shared.txt": "base\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const parent = await ws.fork("keen/merge0002");
    const child = await ws.fork("keen/merge0002-agents/summon-A");
    await child.writeFile("sub/shared.txt", "child\n");
    await child.commit("child");
    await parent.writeFile("sub/shared.txt", "parent\n");
    await parent.commit("parent");
    await parent.merge("keen/merge0002-agents/summon-A", "merge");
    const outside = await mkdtemp(join(tmpdir(), "keen-outside-"));
    execFileSync("mkfifo", [join(outside, "shared.txt")]);
    await rm(join(parent.root, "sub"), { recursive: true });
    await symlink(outside, join(parent.root, "sub"));
    await expect(parent.commitMerge("resolved?")).rejects.toMatchObject({ code: "merge_unresolved" });
  });
});
