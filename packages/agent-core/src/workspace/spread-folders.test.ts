import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";

/** The ext2/3/4 flags of a folder as `lsattr -d` prints them; null where it cannot tell. */
function folderFlags(dir: string): string | null {
  try {
    return execFileSync("lsattr", ["-d", dir], { stdio: ["ignore", "pipe", "ignore"] }).toString().split(" ")[0]!;
  } catch {
    return null;
  }
}

/** Whether the folder flag can be set where the test repositories are made. */
const flagSupported = (() => {
  const probe = mkdtempSync(join(tmpdir(), "keen-topdir-probe-"));
  try {
    execFileSync("chattr", ["+T", probe], { stdio: "ignore" });
    return folderFlags(probe)?.includes("T") === true;
  } catch {
    return false;
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
})();

/** A repository large enough (by its index) for keen to spread its worktrees. */
const large = () => createTestRepo(Object.fromEntries(Array.from({ length: 120 }, (_, i) => [`src/dir-${i % 6}/file-${i}.ts`, `export const v${i} = ${i};\n`])));

describe("where a fork's worktree folder is made", () => {
  it.runIf(flagSupported)("its parent is marked as the top of a folder hierarchy, so each worktree starts in a block group of its own", async () => {
    const repo = await large();
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    const run = await ws.fork("keen/1a2b3c4d");
    const child = await ws.fork("keen/1a2b3c4d-agents/summon-A");
    try {
      // The run's worktree and the child's, each under its own parent (a branch name's folders).
      expect(folderFlags(dirname(run.root))).toContain("T");
      expect(folderFlags(dirname(child.root))).toContain("T");
      // Not the worktree itself: the mark is not inherited, and the agent's folders keep the allocator's usual placement.
      expect(folderFlags(child.root)).not.toContain("T");
      expect(await readFile(join(child.root, "src/dir-1/file-7.ts"), "utf8")).toBe("export const v7 = 7;\n");
    } finally {
      await child.dispose();
      await run.dispose();
    }
  });

  it.runIf(flagSupported)("a checkout of a few files is left unmarked: the chattr process would cost more than it spares", async () => {
    const ws = await LocalWorkspace.open(await createTestRepo({ "README.md": "# r\n" }), { sandbox: false });
    const child = await ws.fork("summon-A");
    try {
      expect(folderFlags(dirname(child.root))).not.toContain("T");
    } finally {
      await child.dispose();
    }
  });

  it.runIf(flagSupported)("a worktrees folder that is a link to a folder elsewhere is not followed: the folder it names is left unmarked", async () => {
    const repo = await large();
    const elsewhere = await mkdtemp(join(tmpdir(), "keen-elsewhere-"));
    await mkdir(join(repo, ".git", "keen", "worktrees"), { recursive: true });
    await symlink(elsewhere, join(repo, ".git", "keen", "worktrees", "keen"));
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    const run = await ws.fork("keen/1a2b3c4d");
    try {
      expect(folderFlags(elsewhere)).not.toContain("T");
    } finally {
      // The worktree was made through the link, so it is not in keen's worktrees folder: dispose refuses to delete it.
      await expect(run.dispose()).rejects.toMatchObject({ code: "not_a_keen_worktree" });
      await rm(elsewhere, { recursive: true, force: true });
    }
  });

  // keen starts chattr from its git launcher's shell, or spawns it itself with KEEN_GIT_LAUNCHER=0.
  for (const launcher of ["1", "0"]) {
    it.runIf(flagSupported)(`marks the folder with the git launcher ${launcher === "1" ? "on" : "off"}, and a fork still works, unmarked, where chattr cannot be found`, async () => {
      const saved = { path: process.env.PATH, launcher: process.env.KEEN_GIT_LAUNCHER };
      process.env.KEEN_GIT_LAUNCHER = launcher;
      const bin = await mkdtemp(join(tmpdir(), "keen-bin-"));
      try {
        const marked = await LocalWorkspace.open(await large(), { sandbox: false });
        const first = await marked.fork("summon-A");
        expect(folderFlags(dirname(first.root))).toContain("T");
        await first.dispose();

        await symlink(execFileSync("sh", ["-c", "command -v git"]).toString().trim(), join(bin, "git"));
        process.env.PATH = bin;
        const unmarked = await LocalWorkspace.open(await large(), { sandbox: false });
        const child = await unmarked.fork("summon-A");
        expect(await readFile(join(child.root, "src/dir-0/file-0.ts"), "utf8")).toBe("export const v0 = 0;\n");
        process.env.PATH = saved.path;
        expect(folderFlags(dirname(child.root))).not.toContain("T");
        await child.dispose();
      } finally {
        process.env.PATH = saved.path;
        if (saved.launcher === undefined) delete process.env.KEEN_GIT_LAUNCHER;
        else process.env.KEEN_GIT_LAUNCHER = saved.launcher;
        await rm(bin, { recursive: true, force: true });
      }
    });
  }
});
