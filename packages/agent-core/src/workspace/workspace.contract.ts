import { execFileSync } from "node:child_process";
import { mkdtemp, symlink, writeFile, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeEach, describe, expect, it } from "vitest";
import { hostPidsRunning } from "./test-repo.js";
import { isForkable, type CheckpointableWorkspace, type Workspace } from "./workspace.js";

/**
 * The behaviour every `Workspace` implementation must have. `create` gets a fresh git
 * repository folder (with README.md committed) and returns a workspace over it.
 */
export function runWorkspaceContract(name: string, setup: () => Promise<{ dir: string; workspace: Workspace }>): void {
  describe(`Workspace contract: ${name}`, () => {
    let dir: string;
    let ws: Workspace;
    beforeEach(async () => {
      ({ dir, workspace: ws } = await setup());
    });

    describe("path confinement", () => {
      it("refuses absolute paths", async () => {
        await expect(ws.readFile("/etc/passwd")).rejects.toMatchObject({ code: "path_outside_workspace" });
        await expect(ws.writeFile(join(dir, "x.txt"), "x")).rejects.toMatchObject({ code: "path_outside_workspace" });
      });

      it("refuses .. escapes, also through inner segments", async () => {
        for (const path of ["../x", "a/../../x", "./../../etc/passwd", ".."]) {
          await expect(ws.writeFile(path, "x"), path).rejects.toMatchObject({ code: "path_outside_workspace" });
        }
        await expect(ws.exec("pwd", { cwd: "../" })).rejects.toMatchObject({ code: "path_outside_workspace" });
      });

      it("refuses NUL bytes and .git internals", async () => {
        await expect(ws.readFile("README.md\0.txt")).rejects.toMatchObject({ code: "path_outside_workspace" });
        await expect(ws.writeFile(".git/config", "x")).rejects.toMatchObject({ code: "path_outside_workspace" });
      });

      it("refuses a symlinked file that points outside", async () => {
        const outside = await mkdtemp(join(tmpdir(), "keen-outside-"));
        await writeFile(join(outside, "secret.txt"), "secret");
        await symlink(join(outside, "secret.txt"), join(dir, "link.txt"));
        await expect(ws.readFile("link.txt")).rejects.toMatchObject({ code: "path_outside_workspace" });
        await expect(ws.writeFile("link.txt", "overwrite")).rejects.toMatchObject({ code: "path_outside_workspace" });
      });

      it("refuses writes through a symlinked folder that points outside, even to new files", async () => {
        const outside = await mkdtemp(join(tmpdir(), "keen-outside-"));
        await symlink(outside, join(dir, "out"));
        await expect(ws.writeFile("out/new/deep.txt", "x")).rejects.toMatchObject({ code: "path_outside_workspace" });
        await expect(ws.readFile("out/anything")).rejects.toMatchObject({ code: "path_outside_workspace" });
        expect(await readdir(outside)).toEqual([]);
      });

      it("refuses a dangling symlink that would point outside", async () => {
        await symlink("/nonexistent-keen-target/file", join(dir, "dangling"));
        await expect(ws.writeFile("dangling", "x")).rejects.toMatchObject({ code: "path_outside_workspace" });
      });

      it("allows symlinks that stay inside", async () => {
        await ws.writeFile("docs/real.md", "inside\n");
        await symlink(join(dir, "docs"), join(dir, "alias"));
        expect(await ws.readFile("alias/real.md")).toBe("inside\n");
      });
    });

    describe("files", () => {
      it("writes atomically, creating folders, and reads back", async () => {
        await ws.writeFile("a/b/c.txt", "one\n");
        await ws.writeFile("a/b/c.txt", "two\n");
        expect(await ws.readFile("a/b/c.txt")).toBe("two\n");
        expect((await readdir(join(dir, "a/b"))).filter((f) => f.endsWith(".tmp"))).toEqual([]);
        expect(await ws.exists("a/b/c.txt")).toBe(true);
        expect(await ws.exists("a/b/missing.txt")).toBe(false);
      });

      it("gives a clear error for a missing file", async () => {
        await expect(ws.readFile("nope.txt")).rejects.toMatchObject({ code: "file_not_found" });
      });

      it("refuses a FIFO at once instead of blocking, and a file over maxBytes before loading it", async () => {
        execFileSync("mkfifo", [join(dir, "pipe")]);
        await expect(ws.readFile("pipe")).rejects.toMatchObject({ code: "not_regular_file" });
        await ws.writeFile("big.txt", "x".repeat(2048));
        await expect(ws.readFile("big.txt", { maxBytes: 1024 })).rejects.toMatchObject({ code: "file_too_large" });
        expect(await ws.readFile("big.txt", { maxBytes: 4096 })).toHaveLength(2048);
      });

      it("lists files honouring .gitignore (nested too), never .git, sorted, with glob and limit", async () => {
        await ws.writeFile(".gitignore", "build/\n*.log\n");
        await ws.writeFile("build/out.js", "x");
        await ws.writeFile("debug.log", "x");
        await ws.writeFile("src/a.ts", "x");
        await ws.writeFile("src/b.ts", "x");
        await ws.writeFile("src/gen/.gitignore", "*.gen.ts\n");
        await ws.writeFile("src/gen/x.gen.ts", "x");
        expect(await ws.listFiles()).toEqual([".gitignore", "README.md", "src/a.ts", "src/b.ts", "src/gen/.gitignore"]);
        expect(await ws.listFiles({ pattern: "src/*.ts" })).toEqual(["src/a.ts", "src/b.ts"]);
        expect(await ws.listFiles({ limit: 2 })).toHaveLength(2);
      });
    });

    describe("commands", () => {
      it("returns exit codes and combined output without throwing", async () => {
        const ok = await ws.exec("echo out; echo err 1>&2; exit 3");
        expect(ok.exitCode).toBe(3);
        expect(ok.output).toContain("out");
        expect(ok.output).toContain("err");
        expect(ok.timedOut).toBe(false);
      });

      it("runs in the workspace root or a confined cwd, with extra env", async () => {
        await ws.writeFile("sub/f.txt", "x");
        expect((await ws.exec("pwd")).output.trim()).toBe(ws.root);
        expect((await ws.exec("ls", { cwd: "sub" })).output.trim()).toBe("f.txt");
        expect((await ws.exec('printf "$KEEN_X"', { env: { KEEN_X: "42" } })).output).toBe("42");
      });

      it("caps output with a marker saying how much was cut", async () => {
        const result = await ws.exec("head -c 50000 /dev/zero | tr '\\0' a", { maxOutputBytes: 1000 });
        expect(result.truncated).toBe(true);
        expect(result.output).toMatch(/\[… 49000 bytes of output truncated …\]/);
        expect(result.output.replace(/\n\[…[^\]]*\]\n/, "")).toBe("a".repeat(1000));
      });

      // A unique sleep duration finds the background process on the host, also when the
      // workspace runs commands in their own PID namespace (where `$!` means nothing to us).
      it("kills the whole process tree on timeout", async () => {
        const needle = uniqueSleep();
        const result = await ws.exec(`sleep ${needle} & sleep 30`, { timeoutMs: 300 });
        expect(result.timedOut).toBe(true);
        await waitFor(async () => hostPidsRunning(needle).length === 0);
      });

      it("kills the whole process tree on abort, promptly", async () => {
        const needle = uniqueSleep();
        const controller = new AbortController();
        const pending = ws.exec(`sh -c 'sleep ${needle} & wait'`, { signal: controller.signal });
        await waitFor(async () => hostPidsRunning(needle).length > 0);
        controller.abort();
        const result = await pending;
        expect(result.aborted).toBe(true);
        await waitFor(async () => hostPidsRunning(needle).length === 0);
      });
    });

    describe("git", () => {
      it("reports the branch, commits changes and returns null when nothing changed", async () => {
        expect(await ws.currentBranch()).toBe("main");
        const before = await ws.head();
        await ws.writeFile("new.txt", "x\n");
        const { sha, skipped } = await ws.commit("Add new.txt", { author: { name: "A", email: "a@x" } });
        expect(skipped).toEqual([]);
        expect(sha).toMatch(/^[0-9a-f]{40}$/);
        expect(sha).not.toBe(before);
        expect(await ws.head()).toBe(sha);
        expect(await ws.commit("nothing")).toEqual({ sha: null, skipped: [] });
      });

      it("never commits credential-looking files or keen's temp files, and names them in skipped", async () => {
        await ws.writeFile("ok.txt", "fine\n");
        await ws.writeFile(".env", "TOKEN=1\n");
        await ws.writeFile("keys/deploy.key", "k\n");
        await ws.writeFile("src/key.ts", 'export const k = "-----BEGIN OPENSSH PRIVATE KEY-----";\n');
        await writeFile(join(dir, ".keen-abcdef012345.tmp"), "partial");
        const { sha, skipped } = await ws.commit("Add ok.txt", { author: { name: "A", email: "a@x" } });
        expect(sha).toMatch(/^[0-9a-f]{40}$/);
        expect(skipped.map((file) => `${file.path}:${file.reason}`).sort()).toEqual([
          ".env:credential",
          ".keen-abcdef012345.tmp:temp_file",
          "keys/deploy.key:credential",
          "src/key.ts:credential",
        ]);
        expect(await ws.exists(".env")).toBe(true);
      });

      it("lists a commit's files as a fresh fork from it lists its own (listCommitFiles, when there is one)", async () => {
        if (!isForkable(ws) || !ws.listCommitFiles) return;
        const author = { author: { name: "A", email: "a@x" } };
        await ws.writeFile(".gitignore", "build/\n");
        for (const path of ["src/a b.ts", "src/ünï/c.txt", "src/z.ts", "a.b", "a/b", "-dash.txt"]) await ws.writeFile(path, `${path}\n`);
        await symlink("README.md", join(dir, "readme-link"));
        const { sha } = await ws.commit("files", author);
        // What the checkout holds besides the commit is not the commit's.
        await ws.writeFile("untracked.txt", "x\n");
        await ws.writeFile("build/out.js", "x\n");
        execFileSync("git", ["rm", "-q", "--cached", "src/z.ts"], { cwd: dir });
        const fork = await ws.fork("keen/listing", { from: sha! });
        try {
          const listed = await ws.listCommitFiles(sha!);
          expect(listed).toEqual(await fork.listFiles({ limit: 1_000_000 }));
          expect(listed).toEqual(["-dash.txt", ".gitignore", "README.md", "a.b", "a/b", "readme-link", "src/a b.ts", "src/z.ts", "src/ünï/c.txt"]);
          expect(await ws.listCommitFiles("main")).toEqual(listed);
          // An earlier commit, by a name git resolves.
          expect(await ws.listCommitFiles(`${sha}~1`)).toEqual(["README.md"]);
        } finally {
          await fork.dispose();
        }
        for (const bad of ["no-such-branch", "--output=listing.txt", "", `${sha}:README.md`]) {
          await expect(ws.listCommitFiles(bad), bad).rejects.toMatchObject({ code: "invalid_ref" });
        }
        await expect(ws.exists("listing.txt")).resolves.toBe(false);
      });

      it("merges several branches in order as merge would, moving the worktree once, and stops before a conflict (mergeMany, when there is one)", async () => {
        if (!isForkable(ws) || !ws.mergeMany) return;
        const forkable = ws;
        const author = { author: { name: "A", email: "a@x" } };
        const sh = (...args: string[]) => execFileSync("git", args, { cwd: dir, encoding: "utf8" }).trim();
        await ws.writeFile("a.txt", "base\n");
        await ws.commit("base", author);
        const branch = async (name: string, files: Record<string, string>) => {
          const fork = await forkable.fork(name);
          for (const [path, content] of Object.entries(files)) await fork.writeFile(path, content);
          if (Object.keys(files).length > 0) await fork.commit(name, author);
          await fork.dispose();
        };
        await branch("keen/contained", {});
        await branch("keen/one", { "one.txt": "1\n" });
        await branch("keen/two", { "a.txt": "two\n", "dir/two.txt": "2\n" });
        await branch("keen/three", { "a.txt": "three\n" });
        await branch("keen/four", { "four.txt": "4\n" });
        const before = await ws.head();

        const merged = await ws.mergeMany([
          { branch: "keen/contained", message: "Merge contained" },
          { branch: "keen/one", message: "Merge one  \n\n\n  body, indented \n\n" },
          { branch: "keen/two", message: "Merge two" },
          { branch: "keen/three", message: "Merge three" },
          { branch: "keen/four", message: "Merge four" },
        ]);
        // Stopped before three (it conflicts with two); four was not tried.
        expect(merged.map((m) => m.branch)).toEqual(["keen/contained", "keen/one", "keen/two"]);
        expect(merged[0]!.sha).toBe(before);
        expect(await ws.head()).toBe(merged[2]!.sha);
        for (const [i, name] of [[1, "keen/one"], [2, "keen/two"]] as const) {
          expect(sh("rev-parse", `${merged[i]!.sha}^1`)).toBe(merged[i - 1]!.sha);
          expect(sh("rev-parse", `${merged[i]!.sha}^2`)).toBe(sh("rev-parse", name));
        }
        expect(execFileSync("git", ["log", "-1", "--format=%B", merged[1]!.sha], { cwd: dir, encoding: "utf8" })).toBe("Merge one\n\n  body, indented\n\n");
        // The worktree and index hold the last merge, with nothing left to commit.
        expect(await ws.readFile("a.txt")).toBe("two\n");
        expect(await ws.readFile("dir/two.txt")).toBe("2\n");
        expect(await ws.exists("four.txt")).toBe(false);
        expect(sh("status", "--porcelain")).toBe("");
        expect(await ws.currentBranch()).toBe("main");
        // The conflicting branch, through merge, conflicts as it would have.
        expect(await ws.merge("keen/three", "Merge three")).toEqual({ status: "conflict", files: ["a.txt"] });
        await ws.abortMerge();
        expect(sh("status", "--porcelain")).toBe("");

        // A file written since the last commit in the way of a merge: nothing changes.
        await branch("keen/five", { "five.txt": "5\n" });
        await ws.writeFile("five.txt", "mine\n");
        const at = await ws.head();
        await expect(ws.mergeMany([{ branch: "keen/four", message: "Merge four" }, { branch: "keen/five", message: "Merge five" }])).rejects.toMatchObject({ code: "merge_failed" });
        expect(await ws.head()).toBe(at);
        expect(await ws.readFile("five.txt")).toBe("mine\n");
        expect(await ws.exists("four.txt")).toBe(false);
        // Names that are not branches, or read as options.
        for (const bad of ["no-such-branch", "--output=merged.txt", ""]) {
          await expect(ws.mergeMany([{ branch: "keen/four", message: "m" }, { branch: bad, message: "m" }]), bad).rejects.toMatchObject({ code: "merge_failed" });
        }
        expect(await ws.head()).toBe(at);
        expect(await ws.exists("merged.txt")).toBe(false);
        expect(await ws.mergeMany([])).toEqual([]);
      });
    });
  });
}

/**
 * The behaviour of a `CheckpointableWorkspace`. `setup` gets a fresh git repository folder (with
 * README.md committed) and returns a workspace keen owns (`workspace`, restorable) and one over
 * a checkout keen must never write (`userCheckout`, such as the repository's own checkout).
 */
export function runCheckpointContract(
  name: string,
  setup: () => Promise<{ workspace: CheckpointableWorkspace; userCheckout: CheckpointableWorkspace }>,
): void {
  describe(`CheckpointableWorkspace contract: ${name}`, () => {
    let ws: CheckpointableWorkspace;
    let user: CheckpointableWorkspace;
    beforeEach(async () => {
      ({ workspace: ws, userCheckout: user } = await setup());
    });

    it("puts the files back exactly: edits undone, added files and folders removed, deleted ones back", async () => {
      await ws.writeFile("lib.txt", "keep\nend\n");
      await ws.writeFile("notes/untracked.txt", "before\n");
      await ws.commit("lib", { author: { name: "A", email: "a@x" } });
      await ws.writeFile("notes/untracked.txt", "uncommitted before the turn\n");
      const head = await ws.head();
      const branch = await ws.currentBranch();
      const saved = await ws.checkpoint("run-1/A", "turn 3");
      expect(saved.label).toBe("turn 3");
      // The checkpoint changed nothing: HEAD, branch, and the pending change is still uncommitted.
      expect(await ws.head()).toBe(head);
      expect(await ws.currentBranch()).toBe(branch);

      // An interrupted turn: an insertion, a new file in a new folder, a deletion, a change.
      await ws.writeFile("lib.txt", "keep\nalpha()\nend\n");
      await ws.writeFile("src/deep/new.ts", "export {};\n");
      await ws.exec("rm README.md");
      await ws.writeFile("notes/untracked.txt", "changed by the turn\n");
      const report = await ws.restoreCheckpoint("run-1/A");

      expect(report.changed.sort()).toEqual(["README.md", "lib.txt", "notes/untracked.txt", "src/deep/new.ts"]);
      expect(await ws.readFile("lib.txt")).toBe("keep\nend\n");
      expect(await ws.readFile("README.md")).toBe("# test\n");
      expect(await ws.readFile("notes/untracked.txt")).toBe("uncommitted before the turn\n");
      expect(await ws.exists("src/deep/new.ts")).toBe(false);
      expect(await ws.exists("src")).toBe(false);
      expect(await ws.head()).toBe(head);
      // Restoring again changes nothing; the restored state commits like any other.
      expect((await ws.restoreCheckpoint("run-1/A")).changed).toEqual([]);
      const { sha } = await ws.commit("after restore", { author: { name: "A", email: "a@x" } });
      expect(sha).not.toBeNull();
      expect(await ws.listFiles()).toEqual(["README.md", "lib.txt", "notes/untracked.txt"]);
    });

    it("never saves or restores keen's temp files or credentials, and leaves them in place", async () => {
      await ws.writeFile(".env", "TOKEN=before\n");
      await writeFile(join(ws.root, ".keen-0123456789ab.tmp"), "partial");
      await ws.checkpoint("k", "t");
      await ws.writeFile(".env", "TOKEN=after\n");
      await ws.writeFile("added.txt", "x\n");
      await ws.restoreCheckpoint("k");
      expect(await ws.exists("added.txt")).toBe(false);
      expect(await ws.readFile(".env")).toBe("TOKEN=after\n");
      expect(await ws.readFile(".keen-0123456789ab.tmp")).toBe("partial");
    });

    it("reads, replaces and drops checkpoints by key; a missing one is a coded error", async () => {
      expect(await ws.readCheckpoint("run/A")).toBeNull();
      const first = await ws.checkpoint("run/A", "turn 1");
      await ws.writeFile("x.txt", "x\n");
      const second = await ws.checkpoint("run/A", "turn 2");
      expect(second.id).not.toBe(first.id);
      expect(await ws.readCheckpoint("run/A")).toEqual(second);
      await ws.checkpoint("run/B", "other");
      await ws.dropCheckpoint("run/A");
      await ws.dropCheckpoint("run/A");
      expect(await ws.readCheckpoint("run/A")).toBeNull();
      expect(await ws.readCheckpoint("run/B")).toMatchObject({ label: "other" });
      await expect(ws.restoreCheckpoint("run/A")).rejects.toMatchObject({ code: "checkpoint_not_found" });
      for (const key of ["", "../x", "a b", ".hidden", "a/../b", "x.lock", "a//b"]) {
        await expect(ws.checkpoint(key, "t"), key).rejects.toMatchObject({ code: "invalid_checkpoint_key" });
      }
    });

    it("a checkpoint called off before it is saved leaves the earlier one under its key", async () => {
      const first = await ws.checkpoint("run/A", "turn 1");
      await ws.writeFile("x.txt", "x\n");
      const off = new AbortController();
      off.abort();
      await expect(ws.checkpoint("run/A", "turn 2", { signal: off.signal })).rejects.toMatchObject({ code: "aborted" });
      expect(await ws.readCheckpoint("run/A")).toEqual(first);
      await ws.restoreCheckpoint("run/A");
      expect(await ws.exists("x.txt")).toBe(false);
    });

    it("puts back the files of a commit the caller keeps as its checkpoint (restoreFilesOf, when there is one)", async () => {
      if (!ws.restoreFilesOf) return; // Optional: without it, `callerKeeps` is never answered `unsaved`.
      const head = await ws.head();
      await ws.writeFile(".env", "TOKEN=before\n");
      const kept = await ws.checkpoint("run/A", "turn 0", { filesOf: head, callerKeeps: true });
      expect(kept.label).toBe("turn 0");
      if (kept.unsaved) expect(kept.id).toBe(head);
      // The interrupted turn: a change, a new file in a new folder, a deletion.
      await ws.writeFile("README.md", "# changed\n");
      await ws.writeFile("src/deep/new.ts", "export {};\n");
      await ws.writeFile(".env", "TOKEN=after\n");
      const report = await ws.restoreFilesOf(head);
      expect(report.changed.sort()).toEqual(["README.md", "src/deep/new.ts"]);
      expect(await ws.readFile("README.md")).toBe("# test\n");
      expect(await ws.exists("src")).toBe(false);
      expect(await ws.readFile(".env")).toBe("TOKEN=after\n");
      expect(await ws.head()).toBe(head);
      // With a journal: the commit's files, then what keen's file tools wrote since.
      await ws.exec("rm README.md");
      const journaled = await ws.restoreFilesOf(head, { journal: [{ path: "notes.md", mode: 0o644, text: "journaled\n" }] });
      expect(journaled.changed).toEqual(["README.md", "notes.md"]);
      expect(await ws.readFile("README.md")).toBe("# test\n");
      expect(await ws.readFile("notes.md")).toBe("journaled\n");
    });

    it("never puts back files in a checkout keen did not create", async () => {
      expect(ws.restorable).toBe(true);
      expect(user.restorable).toBe(false);
      await user.writeFile("mine.txt", "the user's\n");
      await user.checkpoint("user/root", "t");
      await user.writeFile("mine.txt", "the user's, edited\n");
      await expect(user.restoreCheckpoint("user/root")).rejects.toMatchObject({ code: "restore_refused" });
      expect(await user.readFile("mine.txt")).toBe("the user's, edited\n");
      if (user.restoreFilesOf) {
        await expect(user.restoreFilesOf(await user.head())).rejects.toMatchObject({ code: "restore_refused" });
        expect(await user.readFile("mine.txt")).toBe("the user's, edited\n");
      }
    });
  });
}

async function waitFor(check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error("condition not met");
}

let sleeps = 0;
function uniqueSleep(): string {
  return `30.${process.pid}${++sleeps}`;
}
