import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { countGitCommands, withGitTrace } from "./git-trace.js";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";

const files = (count: number) => Object.fromEntries(Array.from({ length: count }, (_, i) => [`src/dir-${i % 7}/file-${i}.ts`, `export const v${i} = ${i};\n`]));

/** A fork of a new repository of `count` files, with how many parallel checkout workers git started for it. */
async function tracedFork(count: number, branch: string) {
  const workspace = await LocalWorkspace.open(await createTestRepo(files(count)), { sandbox: false });
  const { value: child, events } = await withGitTrace(() => workspace.fork(branch));
  return { child, workers: countGitCommands(events)["checkout--worker"] ?? 0 };
}

describe("a fork's checkout", () => {
  it("writes a large worktree's files with git's parallel checkout workers, every file as committed", async () => {
    const { child, workers } = await tracedFork(300, "wide");
    try {
      expect(workers).toBeGreaterThanOrEqual(1);
      for (const i of [0, 1, 150, 299]) expect(await readFile(join(child.root, `src/dir-${i % 7}/file-${i}.ts`), "utf8")).toBe(`export const v${i} = ${i};\n`);
      expect((await child.listFiles({ limit: 1000 })).length).toBe(300);
      expect((await execa("git", ["status", "--porcelain"], { cwd: child.root })).stdout).toBe("");
    } finally {
      await child.dispose();
    }
  });

  it("starts no workers for a worktree below git's threshold of 100 files", async () => {
    const { child, workers } = await tracedFork(20, "narrow");
    try {
      expect(workers).toBe(0);
      expect((await child.listFiles()).length).toBe(20);
    } finally {
      await child.dispose();
    }
  });
});
