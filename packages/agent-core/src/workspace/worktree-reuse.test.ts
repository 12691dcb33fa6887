import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "./test-repo.js";
import { plantHiddenRewrite } from "./testing/hidden-rewrite.js";

const git = async (cwd: string, ...args: string[]) => (await execa("git", args, { cwd, env: TEST_GIT_IDENTITY })).stdout.trim();
const worktreePaths = async (repo: string) =>
  (await git(repo, "worktree", "list", "--porcelain")).split("\n").filter((line) => line.startsWith("worktree ")).map((line) => line.slice(9));

async function repoWithIgnores(): Promise<string> {
  return createTestRepo({ "README.md": "# r\n", ".gitignore": "dist/\n", "src/a.ts": "export const a = 1;\n", "src/b.ts": "export const b = 2;\n" });
}

describe("reuseWorktrees", () => {
  it("hands a disposed fork's worktree to the next fork as a clean checkout of the new branch", async () => {
    const repo = await repoWithIgnores();
    const ws = await LocalWorkspace.open(repo, { sandbox: false, reuseWorktrees: true });
    const first = await ws.fork("summon-A");
    const firstRoot = first.root;
    await first.writeFile("src/a.ts", "export const a = 10;\n");
    await first.commit("A changes a");
    // Left behind, uncommitted: a modified and a deleted tracked file, untracked and ignored files, a nested repository.
    await first.writeFile("src/b.ts", "changed but never committed\n");
    await rm(join(first.root, "README.md"));
    await first.writeFile("scratch.txt", "untracked\n");
    await first.writeFile("dist/out.js", "ignored\n");
    await mkdir(join(first.root, "nested"));
    await execa("git", ["init", "-q"], { cwd: join(first.root, "nested") });
    await first.dispose();

    // The branch is kept with its commit and held by no worktree; the folder is gone from its place.
    expect(existsSync(firstRoot)).toBe(false);
    expect(await git(repo, "show", "summon-A:src/a.ts")).toBe("export const a = 10;");
    expect(await git(repo, "worktree", "list", "--porcelain")).not.toContain("summon-A");
    await expect(first.commit("after dispose")).rejects.toMatchObject({ code: "workspace_disposed" });

    await ws.writeFile("src/main-only.ts", "export const m = 1;\n");
    await ws.commit("main moves on");
    const second = await ws.fork("summon-B");
    expect(second.root).toBe(join(repo, ".git", "keen", "worktrees", "summon-B"));
    // The same registration, reused: one worktree besides the main checkout.
    expect(await readdir(join(repo, ".git", "worktrees"))).toHaveLength(1);
    expect(await second.currentBranch()).toBe("summon-B");
    expect(await second.head()).toBe(await ws.head());
    expect(await git(second.root, "status", "--porcelain", "--ignored", "--untracked-files=all")).toBe("");
    expect(await second.readFile("src/a.ts")).toBe("export const a = 1;\n");
    expect(await second.readFile("src/b.ts")).toBe("export const b = 2;\n");
    expect(await second.readFile("README.md")).toBe("# r\n");
    expect(await second.readFile("src/main-only.ts")).toBe("export const m = 1;\n");
    for (const gone of ["scratch.txt", "dist", "nested"]) expect(existsSync(join(second.root, gone)), gone).toBe(false);
    // The old workspace cannot write into the branch that now owns the git dir.
    await expect(first.writeFile("x.txt", "x\n")).rejects.toMatchObject({ code: "workspace_disposed" });
    await expect(first.fork("summon-A-A")).rejects.toMatchObject({ code: "workspace_disposed" });
    expect(await first.dispose()).toBeUndefined();

    await second.writeFile("notes/b.md", "b\n");
    const { sha } = await second.commit("B adds notes");
    expect(await git(repo, "rev-parse", "summon-B")).toBe(sha);
    expect(await ws.merge("summon-B", "Merge summon-B")).toMatchObject({ status: "merged" });
    expect(await git(repo, "show", "HEAD:notes/b.md")).toBe("b");
    expect(await git(repo, "status", "--porcelain")).toBe("");
    await second.dispose();
    await ws.releaseWorktrees();
    expect(await worktreePaths(repo)).toEqual([repo]);
    expect(await readdir(join(repo, ".git", "worktrees")).catch(() => [])).toEqual([]);
  });

  it("removes instead of keeping a worktree whose .git file was rewritten, or one mid-merge", async () => {
    const repo = await createTestRepo({ "a.txt": "base\n" });
    const ws = await LocalWorkspace.open(repo, { sandbox: false, reuseWorktrees: true });
    const rewritten = await ws.fork("summon-A");
    await writeFile(join(rewritten.root, ".git"), "gitdir: /elsewhere/.git\n");
    await rewritten.dispose();
    expect(await worktreePaths(repo)).toEqual([repo]);

    const parent = await ws.fork("summon-P");
    const child = await parent.fork("summon-P-A");
    await child.writeFile("a.txt", "child\n");
    await child.commit("child");
    await child.dispose();
    await parent.writeFile("a.txt", "parent\n");
    await parent.commit("parent");
    expect(await parent.merge("summon-P-A", "Merge")).toMatchObject({ status: "conflict" });
    await parent.dispose();
    // Only the child's worktree was kept; the conflicted parent's is gone.
    expect(await worktreePaths(repo)).toHaveLength(2);
    const next = await ws.fork("summon-N");
    expect(await git(next.root, "status", "--porcelain")).toBe("");
    expect(await next.readFile("a.txt")).toBe("base\n");
    await next.dispose();
    await ws.releaseWorktrees();
    expect(await worktreePaths(repo)).toEqual([repo]);
  });

  it("is off by default: dispose removes the worktree", async () => {
    const repo = await createTestRepo();
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    const child = await ws.fork("summon-A");
    await child.dispose();
    expect(await worktreePaths(repo)).toEqual([repo]);
    expect(await readFile(join(repo, "README.md"), "utf8")).toBe("# test\n");
  });

  it("a later open in another process removes kept worktrees once their owner is gone", async () => {
    const repo = await createTestRepo();
    const script = `
      import { LocalWorkspace } from ${JSON.stringify(new URL("./local-workspace.ts", import.meta.url).pathname)};
      const ws = await LocalWorkspace.open(process.argv[1], { sandbox: false, reuseWorktrees: true });
      const child = await ws.fork("summon-A");
      await child.dispose();
    `;
    await execa(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script, repo]);
    expect(await worktreePaths(repo)).toHaveLength(2);
    const again = await LocalWorkspace.open(repo, { sandbox: false });
    expect(again.recovered.removedWorktrees).toHaveLength(1);
    expect(await worktreePaths(repo)).toEqual([repo]);
    expect(await git(repo, "rev-parse", "--verify", "summon-A")).toMatch(/^[0-9a-f]{40}$/);
  });
});

describe("reuseWorktrees against a planted file", () => {
  // An agent rewrites a committed file with the same size and puts its modification time back, once
  // the index holds that time and is newer (so git does not treat the entry as racy). With a user's
  // `core.checkStat=minimal` (or `core.trustctime=false`) git compares only what the agent controls,
  // takes the file as unchanged and would leave the planted bytes in the worktree the next fork gets.
  for (const config of [["core.checkStat", "minimal"], ["core.trustctime", "false"]] as const) {
    it(`gives the next fork its commit's bytes even with ${config[0]}=${config[1]} in the repository's config`, async () => {
      const repo = await repoWithIgnores();
      await git(repo, "config", config[0], config[1]);
      const ws = await LocalWorkspace.open(repo, { sandbox: false, reuseWorktrees: true });
      const first = await ws.fork("plant-A");
      await plantHiddenRewrite(first, "src/a.ts", { committed: "export const a = 7;\n", planted: "export const a = 9;\n", other: ["src/b.ts", "export const b = 3;\n"] });
      await first.dispose();
      expect((await ws.merge("plant-A", "Merge plant-A")).status).toBe("merged");
      const second = await ws.fork("plant-B");
      expect(second.root).toBe(join(repo, ".git", "keen", "worktrees", "plant-B"));
      expect(await readFile(join(second.root, "src", "a.ts"), "utf8")).toBe("export const a = 7;\n");
      await second.dispose();
      await ws.releaseWorktrees();
    });
  }
});
