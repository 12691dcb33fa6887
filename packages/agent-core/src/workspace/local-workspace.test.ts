import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";
import { runCheckpointContract, runWorkspaceContract } from "./workspace.contract.js";

// The sandboxed variant runs the same contract in sandbox-runner.test.ts.
runWorkspaceContract("LocalWorkspace without a sandbox", async () => {
  const dir = await createTestRepo();
  return { dir, workspace: await LocalWorkspace.open(dir, { sandbox: false }) };
});

runCheckpointContract("LocalWorkspace", async () => {
  const dir = await createTestRepo();
  const userCheckout = await LocalWorkspace.open(dir, { sandbox: false });
  return { workspace: await userCheckout.fork("keen/work"), userCheckout };
});

describe("LocalWorkspace", () => {
  it("refuses a missing folder and a folder outside git", async () => {
    await expect(LocalWorkspace.open("/nonexistent/keen")).rejects.toMatchObject({ code: "workspace_not_found" });
    const plain = await mkdtemp(join(tmpdir(), "keen-plain-"));
    await expect(LocalWorkspace.open(plain)).rejects.toMatchObject({ code: "not_a_git_repository" });
  });

  it("commits with keen's identity when git has none configured", async () => {
    const dir = await createTestRepo();
    const saved = { global: process.env.GIT_CONFIG_GLOBAL, system: process.env.GIT_CONFIG_NOSYSTEM };
    process.env.GIT_CONFIG_GLOBAL = "/dev/null";
    process.env.GIT_CONFIG_NOSYSTEM = "1";
    try {
      const ws = await LocalWorkspace.open(dir);
      await ws.writeFile("x.txt", "x");
      await ws.commit("x");
      const author = await execa("git", ["log", "-1", "--format=%an <%ae>|%cn <%ce>"], { cwd: dir });
      expect(author.stdout).toBe("keen <keen@localhost>|keen <keen@localhost>");
    } finally {
      if (saved.global === undefined) delete process.env.GIT_CONFIG_GLOBAL;
      else process.env.GIT_CONFIG_GLOBAL = saved.global;
      if (saved.system === undefined) delete process.env.GIT_CONFIG_NOSYSTEM;
      else process.env.GIT_CONFIG_NOSYSTEM = saved.system;
    }
  });

  it("commits as git's own identity when only an email is configured, as before", async () => {
    const dir = await createTestRepo();
    await execa("git", ["config", "user.email", "only@example.test"], { cwd: dir });
    const saved = { global: process.env.GIT_CONFIG_GLOBAL, system: process.env.GIT_CONFIG_NOSYSTEM };
    process.env.GIT_CONFIG_GLOBAL = "/dev/null";
    process.env.GIT_CONFIG_NOSYSTEM = "1";
    try {
      const ws = await LocalWorkspace.open(dir, { sandbox: false });
      await ws.writeFile("x.txt", "x");
      expect((await ws.commit("x")).sha).not.toBeNull();
      // git refuses the commit with user.useConfigOnly (no name), then commits as it always did: the email configured, the name git finds.
      const author = await execa("git", ["log", "-1", "--format=%ae|%ce"], { cwd: dir });
      expect(author.stdout).toBe("only@example.test|only@example.test");
    } finally {
      if (saved.global === undefined) delete process.env.GIT_CONFIG_GLOBAL;
      else process.env.GIT_CONFIG_GLOBAL = saved.global;
      if (saved.system === undefined) delete process.env.GIT_CONFIG_NOSYSTEM;
      else process.env.GIT_CONFIG_NOSYSTEM = saved.system;
    }
  });

  it("forks a worktree on a new branch, merges it back with --no-ff, and reattaches to it only when asked", async () => {
    const dir = await createTestRepo();
    const ws = await LocalWorkspace.open(dir);
    const child = await ws.fork("summon-A");
    expect(await child.currentBranch()).toBe("summon-A");
    await child.writeFile("child.txt", "from child\n");
    await child.commit("child work");
    await expect(ws.fork("summon-A")).rejects.toMatchObject({ code: "branch_exists" });
    const again = await ws.fork("summon-A", { reattach: true });
    expect(again.root).toBe(child.root);
    const merged = await ws.merge("summon-A", "Merge summon-A");
    expect(merged.status).toBe("merged");
    expect(await readFile(join(dir, "child.txt"), "utf8")).toBe("from child\n");
    const parents = await execa("git", ["rev-list", "--parents", "-n", "1", "HEAD"], { cwd: dir });
    expect(parents.stdout.split(" ")).toHaveLength(3);
    await child.dispose();
    const list = await execa("git", ["worktree", "list", "--porcelain"], { cwd: dir });
    expect(list.stdout).not.toContain("summon-A");
    expect((await execa("git", ["branch", "--list", "summon-A"], { cwd: dir })).stdout).toContain("summon-A");
  });

  it("reports conflicts, and resetTo restores the pre-merge commit with a clean tree", async () => {
    const dir = await createTestRepo({ "shared.txt": "base\n" });
    const ws = await LocalWorkspace.open(dir);
    const child = await ws.fork("summon-A");
    await child.writeFile("shared.txt", "child\n");
    await child.commit("child edit");
    await ws.writeFile("shared.txt", "parent\n");
    const before = (await ws.commit("parent edit")).sha!;
    const result = await ws.merge("summon-A", "Merge summon-A");
    expect(result).toEqual({ status: "conflict", files: ["shared.txt"] });
    await ws.resetTo(before);
    expect(await ws.head()).toBe(before);
    expect((await execa("git", ["status", "--porcelain"], { cwd: dir })).stdout).toBe("");
    expect(await ws.readFile("shared.txt")).toBe("parent\n");
  });

  it("concludes a resolved merge and refuses one with conflicts left", async () => {
    const dir = await createTestRepo({ "shared.txt": "base\n" });
    const ws = await LocalWorkspace.open(dir);
    const child = await ws.fork("summon-B");
    await child.writeFile("shared.txt", "child\n");
    await child.commit("child edit");
    await ws.writeFile("shared.txt", "parent\n");
    await ws.commit("parent edit");
    await ws.merge("summon-B", "Merge summon-B");
    await expect(ws.commitMerge("Merge summon-B")).rejects.toMatchObject({ code: "merge_unresolved" });
    expect(await ws.conflictedFiles()).toEqual(["shared.txt"]);
    await ws.writeFile("shared.txt", "parent and child\n");
    const sha = await ws.commitMerge("Merge summon-B (resolved)");
    expect(await ws.head()).toBe(sha);
    expect(await ws.conflictedFiles()).toEqual([]);
  });

  it("forks several worktrees in parallel without racing on git locks", async () => {
    const dir = await createTestRepo();
    const ws = await LocalWorkspace.open(dir);
    const children = await Promise.all(["summon-A", "summon-B", "summon-C", "summon-D"].map((b) => ws.fork(b)));
    expect(await Promise.all(children.map((c) => c.currentBranch()))).toEqual(["summon-A", "summon-B", "summon-C", "summon-D"]);
    await Promise.all(children.map((c) => c.dispose()));
    const list = await execa("git", ["worktree", "list"], { cwd: dir });
    expect(list.stdout.trim().split("\n")).toHaveLength(1);
  });
});
