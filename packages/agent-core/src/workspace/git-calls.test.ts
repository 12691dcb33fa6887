import childProcess from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, realpath, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { syncBuiltinESMExports } from "node:module";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { subtaskLabel } from "../lifecycle/branch-names.js";
import { startTask } from "../lifecycle/start-task.js";
import { done, explore, fanOutScenario, scenarioPolicy, write } from "../lifecycle/testing/scenario.js";
import { anthropic } from "../model/anthropic.js";
import { reply, startMessagesServer } from "../testing/index.js";
import { countGitCommands, withGitTrace } from "./git-trace.js";
import { LocalWorkspace } from "./local-workspace.js";
import { isLooseCommit, isValidBranchName, refsAroundFromFiles } from "./refs.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "./test-repo.js";

// Every git process this file's workspaces start, by subcommand (keen's `-c` hardening left out).
// Counted at spawn, so keen spawns each here rather than starting it from its launcher's shell.
const spawned: string[] = [];
const originalSpawn = childProcess.spawn;
beforeAll(() => {
  process.env.KEEN_GIT_LAUNCHER = "0";
  childProcess.spawn = ((command: string, args?: readonly string[], ...rest: unknown[]) => {
    if (command === "git") spawned.push((args ?? []).filter((arg, i, all) => arg !== "-c" && all[i - 1] !== "-c")[0] ?? "");
    return (originalSpawn as (...params: unknown[]) => ReturnType<typeof originalSpawn>)(command, args, ...rest);
  }) as typeof childProcess.spawn;
  syncBuiltinESMExports();
});
afterAll(() => {
  delete process.env.KEEN_GIT_LAUNCHER;
  childProcess.spawn = originalSpawn;
  syncBuiltinESMExports();
});

const git = async (dir: string, ...args: string[]) => (await execa("git", args, { cwd: dir, env: TEST_GIT_IDENTITY })).stdout.trim();

/** A test repository with an identity of its own, so commits count the same on any machine. */
async function createRepo(files: Record<string, string>): Promise<string> {
  const dir = await createTestRepo(files);
  await git(dir, "config", "user.name", TEST_GIT_IDENTITY.GIT_AUTHOR_NAME);
  await git(dir, "config", "user.email", TEST_GIT_IDENTITY.GIT_AUTHOR_EMAIL);
  return dir;
}

async function counted<T>(step: () => Promise<T>): Promise<{ value: T; calls: string[] }> {
  spawned.length = 0;
  const value = await step();
  return { value, calls: [...spawned] };
}

describe("git subprocesses of one fork + commit + merge + dispose", () => {
  it("are six: the branch (update-ref) and checkout, three to commit, one merge; the removal starts none", async () => {
    const dir = await createRepo({ "README.md": "# r\n", "src/a.ts": "export const a = 1;\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    // A clean checkout (the parent before each merge) is found clean with one status.
    const clean = await counted(() => ws.commit("nothing"));
    expect(clean.value).toEqual({ sha: null, skipped: [] });
    // No identity lookup: git is asked to commit with its configured identity and refuses when it has none.
    expect(clean.calls).toEqual(["status"]);
    expect((await counted(() => ws.commit("nothing"))).calls).toEqual(["status"]);
    const fork = await counted(() => ws.fork("summon-A"));
    expect(fork.calls).toEqual(["update-ref", "reset"]);
    const child = fork.value;
    await child.writeFile("notes/a.md", "a\n");
    const commit = await counted(() => child.commit("Add a"));
    expect(commit.value.sha).toBe(await git(dir, "rev-parse", "summon-A"));
    expect(commit.calls).toEqual(["status", "add", "commit"]);
    const merge = await counted(() => ws.merge("summon-A", "Merge summon-A"));
    expect(merge.value).toEqual({ status: "merged", sha: await git(dir, "rev-parse", "HEAD") });
    expect(merge.calls).toEqual(["merge"]);
    const dispose = await counted(() => child.dispose());
    // No `git worktree remove`: the folder and the registration are deleted in this process.
    expect(dispose.calls).toEqual([]);
    expect(existsSync(child.root)).toBe(false);
    expect(await git(dir, "worktree", "list", "--porcelain")).not.toContain("summon-A");
    // HEAD and "is a merge in progress" come from the git dir's files.
    expect((await counted(() => Promise.all([ws.head(), ws.abortMerge()]))).calls).toEqual([]);
    expect(await git(dir, "show", "HEAD:notes/a.md")).toBe("a");
  });

  it("drops a checkpoint with one update-ref, loose or packed, and starts nothing when there is none", async () => {
    const dir = await createTestRepo({ "README.md": "# r\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    await ws.checkpoint("run_1/root", "turn 0");
    expect((await counted(() => ws.dropCheckpoint("run_1/root"))).calls).toEqual(["update-ref"]);
    expect(await ws.readCheckpoint("run_1/root")).toBeNull();
    expect((await counted(() => ws.dropCheckpoint("run_1/root"))).calls).toEqual([]);
    expect((await counted(() => ws.dropCheckpoint("run_never/A"))).calls).toEqual([]);
    // Packed (no loose file left): still found, and deleted.
    await ws.checkpoint("run_1/A", "turn 0");
    await git(dir, "pack-refs", "--all");
    expect((await counted(() => ws.dropCheckpoint("run_1/B"))).calls).toEqual([]);
    expect((await counted(() => ws.dropCheckpoint("run_1/A"))).calls).toEqual(["update-ref"]);
    expect(await git(dir, "for-each-ref", "refs/keen")).toBe("");
    // Refs that are not plain files (reftable): git is asked.
    await mkdir(join(dir, ".git", "reftable"));
    expect((await counted(() => ws.dropCheckpoint("run_1/A"))).calls).toEqual(["update-ref"]);
  });

  it("with reuseWorktrees, a fork from a kept worktree is one checkout and a dispose one clean", async () => {
    const dir = await createRepo({ "README.md": "# r\n", "src/a.ts": "export const a = 1;\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false, reuseWorktrees: true });
    const first = await ws.fork("summon-A");
    await first.writeFile("notes/a.md", "a\n");
    await first.commit("Add a");
    await first.dispose();
    const fork = await counted(() => ws.fork("summon-B"));
    expect(fork.calls).toEqual(["checkout"]);
    const child = fork.value;
    await child.writeFile("notes/b.md", "b\n");
    expect((await counted(() => child.commit("Add b"))).calls).toEqual(["status", "add", "commit"]);
    expect((await counted(() => ws.merge("summon-B", "Merge summon-B"))).calls).toEqual(["merge"]);
    // Whether the index holds a submodule is read from the index file.
    expect((await counted(() => child.dispose())).calls).toEqual(["clean"]);
    expect((await counted(() => ws.releaseWorktrees())).calls).toEqual([]);
    expect(await git(dir, "worktree", "list", "--porcelain")).not.toContain(".parked");
    expect(await git(dir, "show", "HEAD:notes/b.md")).toBe("b");
  });

  it("refuses to commit unmerged paths, found by the same status", async () => {
    const dir = await createTestRepo({ "a.txt": "base\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-C");
    await child.writeFile("a.txt", "child\n");
    await child.commit("child");
    await ws.writeFile("a.txt", "parent\n");
    await ws.commit("parent");
    expect(await ws.merge("summon-C", "Merge")).toEqual({ status: "conflict", files: ["a.txt"] });
    await expect(ws.commit("would record markers")).rejects.toMatchObject({ code: "merge_unresolved", message: expect.stringContaining("a.txt") });
    await ws.abortMerge();
    expect((await ws.commit("clean again")).sha).toBeNull();
    await child.dispose();
  });

  it("still reports nothing to commit when the staged change undoes one staged before", async () => {
    const dir = await createTestRepo({ "a.txt": "one\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-B");
    await child.writeFile("a.txt", "two\n");
    await execa("git", ["add", "a.txt"], { cwd: child.root });
    await child.writeFile("a.txt", "one\n");
    const head = await child.head();
    expect((await child.commit("undo")).sha).toBeNull();
    expect(await child.head()).toBe(head);
    await child.dispose();
  });

  it("commits and merges start no `git maintenance run --auto` in the user's repository", async () => {
    const dir = await createRepo({ "a.txt": "base\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const clean = await ws.fork("summon-M");
    await clean.writeFile("notes/m.md", "m\n");
    const conflicting = await ws.fork("summon-N");
    await conflicting.writeFile("a.txt", "child\n");
    // git's own record of the processes it starts (trace2 event stream), kept for the steps under test.
    const { events } = await withGitTrace(async () => {
      await clean.commit("m");
      await conflicting.commit("child");
      expect((await ws.merge("summon-M", "Merge M")).status).toBe("merged");
      await ws.writeFile("a.txt", "parent\n");
      await ws.commit("parent");
      expect(await ws.merge("summon-N", "Merge N")).toEqual({ status: "conflict", files: ["a.txt"] });
      await ws.writeFile("a.txt", "both\n");
      await ws.commitMerge("Merge N");
    });
    // The trace saw the steps: three commits, two merges and the conflicted merge's commit.
    const commands = countGitCommands(events);
    expect(commands.merge).toBe(2);
    expect(commands.commit).toBe(4);
    const children = events.filter((event) => event.event === "child_start").map((event) => (event.argv ?? []).join(" "));
    expect(children.filter((argv) => argv.includes("maintenance"))).toEqual([]);
    expect(await git(dir, "show", "HEAD:a.txt")).toBe("both");
    await clean.dispose();
    await conflicting.dispose();
  });
});

describe("git subprocesses of a checkpoint", () => {
  it("start the ref update only once the tree is written: called off before, none is started for it", async () => {
    const dir = await createRepo({ "README.md": "# r\n", "src/a.ts": "export const a = 1;\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-cp");
    const off = new AbortController();
    off.abort();
    const calledOff = await counted(() => child.checkpoint("run_c/A", "turn 0", { signal: off.signal }).catch((error: { code?: string }) => error.code));
    expect(calledOff).toEqual({ value: "aborted", calls: [] });
    await child.writeFile("notes/a.md", "a\n");
    const saved = await counted(() => child.checkpoint("run_c/A", "turn 1"));
    expect(saved.calls).toEqual(["ls-files", "add", "write-tree", "update-ref", "commit-tree"]);
    expect(await child.readCheckpoint("run_c/A")).toEqual(saved.value);
    await child.dispose();
  });

  it("with filesOf, save that commit's tree in two processes; a sparse worktree's files are staged anyway", async () => {
    const dir = await createRepo({ "README.md": "# r\n", "src/a.ts": "export const a = 1;\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-fresh");
    const head = await child.head();
    const saved = await counted(() => child.checkpoint("run_f/A", "turn 0", { filesOf: head }));
    expect(saved.calls).toEqual(["update-ref", "commit-tree"]);
    expect(await git(dir, "rev-parse", `${saved.value.id}^{tree}`)).toBe(await git(dir, "rev-parse", `${head}^{tree}`));
    await expect(child.checkpoint("run_f/A", "turn 1", { filesOf: "HEAD" })).rejects.toMatchObject({ code: "invalid_option" });
    const sparse = await ws.fork("summon-sparse", { paths: ["src"] });
    expect((await counted(() => sparse.checkpoint("run_f/B", "turn 0", { filesOf: head }))).calls).toEqual(["ls-files", "write-tree", "update-ref", "commit-tree"]);
    await Promise.all([child.dispose(), sparse.dispose()]);
  });

  it("with filesOf kept by the caller, save nothing and start no process; a sparse worktree still saves its files", async () => {
    const dir = await createRepo({ "README.md": "# r\n", "src/a.ts": "export const a = 1;\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-kept");
    const head = await child.head();
    const kept = await counted(() => child.checkpoint("run_k/A", "turn 0", { filesOf: head, callerKeeps: true }));
    expect(kept).toEqual({ value: { id: head, label: "turn 0", unsaved: true }, calls: [] });
    expect(await child.readCheckpoint("run_k/A")).toBeNull();
    const sparse = await ws.fork("summon-kept-sparse", { paths: ["src"] });
    const staged = await counted(() => sparse.checkpoint("run_k/B", "turn 0", { filesOf: head, callerKeeps: true }));
    expect(staged.value.unsaved).toBeUndefined();
    expect(staged.calls).toEqual(["ls-files", "write-tree", "update-ref", "commit-tree"]);
    // Put back from the commit alone, in a sparse worktree too (the files outside its paths stay unchecked-out).
    await child.writeFile("src/b.ts", "b\n");
    expect((await child.restoreFilesOf(head)).changed).toEqual(["src/b.ts"]);
    await sparse.writeFile("src/b.ts", "b\n");
    await sparse.writeFile("src/a.ts", "changed\n");
    expect((await sparse.restoreFilesOf(head)).changed).toEqual(["src/a.ts", "src/b.ts"]);
    expect(await sparse.readFile("src/a.ts")).toBe("export const a = 1;\n");
    await expect(readFile(join(sparse.root, "README.md"))).rejects.toMatchObject({ code: "ENOENT" });
    await Promise.all([child.dispose(), sparse.dispose()]);
  });

  it("a file written behind the workspace's back is still committed", async () => {
    const dir = await createRepo({ "a.txt": "a\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("summon-direct");
    await writeFile(join(child.root, "b.txt"), "b\n");
    expect((await child.commit("b")).sha).not.toBeNull();
    expect(await git(dir, "show", "summon-direct:b.txt")).toBe("b");
    await child.dispose();
  });
});

describe("branch names without check-ref-format", () => {
  it("accepts no name git refuses, and the ordinary names git accepts", async () => {
    const dir = await createTestRepo();
    const names = [
      "summon-A", "feature/x", "a/b/c", "ünï/cødé", "a.b", "a-b_c+d", "v1.2", "x@y",
      "", "-x", "HEAD", "@", "a..b", ".a", "a/.b", "a.lock", "a/b.lock/c", "a/", "/a", "a//b", "a.", "a@{1}", "a b", "a~1", "a^", "a:b",
      "a?", "a*", "a[", "a\\b", "a\u0001", "a\u007f", "@{-1}",
    ];
    for (const name of names) {
      const byGit = (await execa("git", ["check-ref-format", "--branch", name], { cwd: dir, reject: false })).exitCode === 0 && !name.startsWith("-");
      if (isValidBranchName(name)) expect(byGit, name).toBe(true);
    }
    // Names git itself expands (`@`, `@{-1}`) or refuses are all refused here.
    expect(names.filter(isValidBranchName)).toEqual(names.slice(0, 8));
  });
});

describe("ref and object reads from files", () => {
  it("answer as for-each-ref and cat-file do, for loose and packed refs", async () => {
    const dir = await createTestRepo();
    const common = join(dir, ".git");
    await git(dir, "branch", "loose/below");
    await git(dir, "branch", "flat");
    expect(await refsAroundFromFiles(common, "loose")).toEqual({ exists: false, clash: "refs/heads/loose/below" });
    expect(await refsAroundFromFiles(common, "flat/child")).toEqual({ exists: false, clash: "refs/heads/flat" });
    expect(await refsAroundFromFiles(common, "flat")).toEqual({ exists: true, clash: null });
    expect(await refsAroundFromFiles(common, "loose-other/x")).toEqual({ exists: false, clash: null });
    await git(dir, "pack-refs", "--all");
    expect(await refsAroundFromFiles(common, "loose")).toEqual({ exists: false, clash: "refs/heads/loose/below" });
    expect(await refsAroundFromFiles(common, "main")).toEqual({ exists: true, clash: null });
    await git(dir, "branch", "-D", "loose/below");
    expect(await refsAroundFromFiles(common, "loose")).toEqual({ exists: false, clash: null });

    const head = await git(dir, "rev-parse", "HEAD");
    expect(await isLooseCommit(common, head)).toBe(true);
    expect(await isLooseCommit(common, await git(dir, "rev-parse", "HEAD^{tree}"))).toBe(false);
    await git(dir, "gc", "-q");
    expect(await isLooseCommit(common, head)).toBe(false); // packed now: the caller asks git
  });
});

describe("git subprocesses before a run's first request", () => {
  it("open asks rev-parse once; listFiles and currentBranch take one call and none", async () => {
    const dir = await createTestRepo({ "README.md": "# r\n", "gone.txt": "x\n", "src/a.ts": "a\n" });
    const opened = await counted(() => LocalWorkspace.open(dir, { sandbox: false }));
    expect(opened.calls.filter((call) => call === "rev-parse")).toEqual(["rev-parse"]);
    const ws = opened.value;
    await rm(join(dir, "gone.txt"));
    await writeFile(join(dir, "new.txt"), "n\n");
    const listed = await counted(() => ws.listFiles());
    expect(listed.value).toEqual(["README.md", "new.txt", "src/a.ts"]);
    expect(listed.calls).toEqual(["ls-files"]);
    const branch = await counted(() => ws.currentBranch());
    expect(branch).toEqual({ value: "main", calls: [] });
    await git(dir, "checkout", "-q", "--detach");
    expect(await ws.currentBranch()).toBe("HEAD");
  });

  it("open still finds a repository whose path holds a newline", async () => {
    const parent = await mkdtemp(join(tmpdir(), "keen-nl-"));
    const dir = join(parent, "line\nbreak");
    await mkdir(dir);
    await execa("git", ["init", "-q", "-b", "main"], { cwd: dir });
    await writeFile(join(dir, "a.txt"), "a\n");
    await execa("git", ["add", "-A"], { cwd: dir });
    await execa("git", ["commit", "-qm", "init"], { cwd: dir, env: TEST_GIT_IDENTITY });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    expect(ws.root).toBe(await realpath(dir));
    expect(await ws.listFiles()).toEqual(["a.txt"]);
  });
});

describe("git subprocesses of a run", () => {
  it("save no checkpoint and drop none when the only writing turns start from the fresh worktree's commit", async () => {
    const dir = await createRepo({ "README.md": "# r\n" });
    // As `keen run` on the benchmark task: list files, then write a file, run a command, finish.
    const server = await startMessagesServer({
      policy: scenarioPolicy({
        root: {
          finish_explore: [reply.toolUse("list_files", {}), explore("COMPLETE")],
          complete_task: [write("notes/hello.md", "# Hello\n"), reply.toolUse("run_command", { command: "cat notes/hello.md" }), done("Wrote it.")],
        },
      }),
    });
    try {
      const workspace = await LocalWorkspace.open(dir, { sandbox: false });
      const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
      const run = await counted(() => startTask({ vision: "Write a note", workspace, model, onSnapshot: () => {} }).result);
      expect(run.value.status, run.value.summary).toBe("success");
      // The checkpoint of the first writing turn is the worktree's commit, kept in the snapshot:
      // no commit-tree, and the only ref update creates the run branch.
      expect(run.calls.filter((call) => call === "commit-tree" || call === "update-ref")).toEqual(["update-ref"]);
    } finally {
      await server.close();
    }
    expect(await git(dir, "for-each-ref", "refs/keen")).toBe("");
  });

  it("a parent asks status before its first merge only: a clean merge leaves nothing of its own to commit", async () => {
    const dir = await createRepo({ "README.md": "# r\n" });
    const children = 4;
    const server = await startMessagesServer({ policy: scenarioPolicy(fanOutScenario(children)) });
    try {
      const workspace = await LocalWorkspace.open(dir, { sandbox: false });
      const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
      const run = await counted(() => startTask({ vision: "Build the parts", workspace, model, limits: { maxDepth: 1, maxChildren: children } }).result);
      expect(run.value.status, run.value.summary).toBe("success");
      // Each child is merged in the worktree (merge) or, with others that finished together, from
      // git's objects (merge-tree) with one worktree update (merge --ff-only) for them all.
      const merges = run.calls.filter((call) => call === "merge").length;
      const fromObjects = run.calls.filter((call) => call === "merge-tree").length;
      expect(merges).toBeLessThanOrEqual(children);
      expect(merges + fromObjects).toBeGreaterThanOrEqual(children);
      // One status per child (its final commit), one for the parent before its first merge, and
      // one for the root's own final commit.
      expect(run.calls.filter((call) => call === "status")).toHaveLength(children + 2);
    } finally {
      await server.close();
    }
    // Every child's file reached the run's branch, each through its own merge commit.
    const branch = (await git(dir, "for-each-ref", "--format=%(refname:short)", "refs/heads/keen")).split("\n")[0]!;
    for (let i = 0; i < children; i++) expect(await git(dir, "show", `${branch}:src/part-${subtaskLabel(i)}.ts`)).toBe(`export const part${subtaskLabel(i)} = true;`);
    expect((await git(dir, "rev-list", "--merges", branch)).split("\n")).toHaveLength(children);
  });
});
