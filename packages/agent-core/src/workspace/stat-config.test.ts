import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "./test-repo.js";
import { plantHiddenRewrite } from "./testing/hidden-rewrite.js";

const git = async (cwd: string, ...args: string[]) => (await execa("git", args, { cwd, env: TEST_GIT_IDENTITY })).stdout;

/**
 * A rewrite that keeps a file's size and puts its modification time back, made once the index
 * holds that time and is newer (so git does not re-read the entry as racy). A user's config that
 * trusts less of the stat data must not make keen's commit or checkpoint miss it.
 */
describe("a rewrite hidden from git's stat check", () => {
  for (const config of [["core.checkStat", "minimal"], ["core.trustctime", "false"], ["core.ignoreStat", "true"]] as const) {
    it(`is committed and checkpointed with ${config[0]}=${config[1]} in the repository's config`, async () => {
      const repo = await createTestRepo({ "src/a.ts": "export const a = 1;\n", "src/b.ts": "export const b = 2;\n" });
      await git(repo, "config", config[0], config[1]);
      const ws = await LocalWorkspace.open(repo, { sandbox: false });
      const child = await ws.fork("hidden-rewrite");
      await plantHiddenRewrite(child, "src/a.ts", { committed: "export const a = 7;\n", planted: "export const a = 9;\n", other: ["src/b.ts", "export const b = 3;\n"] });

      const saved = await child.checkpoint("stat/hidden", "turn 1");
      expect(await git(repo, "show", `${saved.id}:src/a.ts`)).toBe("export const a = 9;");
      const { sha } = await child.commit("sets a again");
      expect(await git(repo, "show", `${sha}:src/a.ts`)).toBe("export const a = 9;");
      await child.dropCheckpoint("stat/hidden");
      await child.dispose();
    });
  }
});
