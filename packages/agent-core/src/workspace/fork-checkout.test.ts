import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { countGitCommands, withGitTrace } from "./git-trace.js";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";

const files = (count: number) => Object.fromEntries(Array.from({ length: count }, (_, i) => [`src/dir-${i % 7}/file-${i}.ts`, `export const v${i} = ${i};\n`]));

describe("a fork's checkout", () => {
  it("writes a large worktree's files in one git process, every file as committed", async () => {
    const workspace = await LocalWorkspace.open(await createTestRepo(files(300)), { sandbox: false });
    const { value: child, events } = await withGitTrace(() => workspace.fork("wide"));
    try {
      // No parallel checkout workers: with the worktree in a block group of its own, one process
      // wrote 2,000 files in less time than two, at half the CPU (docs/performance.md).
      expect(countGitCommands(events)["checkout--worker"] ?? 0).toBe(0);
      for (const i of [0, 1, 150, 299]) expect(await readFile(join(child.root, `src/dir-${i % 7}/file-${i}.ts`), "utf8")).toBe(`export const v${i} = ${i};\n`);
      expect((await child.listFiles({ limit: 1000 })).length).toBe(300);
      expect((await execa("git", ["status", "--porcelain"], { cwd: child.root })).stdout).toBe("");
    } finally {
      await child.dispose();
    }
  });
});
