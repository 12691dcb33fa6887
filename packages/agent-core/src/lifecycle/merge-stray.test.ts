import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { anthropic } from "../model/anthropic.js";
import { reply, startMessagesServer } from "../testing/index.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo } from "../workspace/test-repo.js";
import type { KeenEvent } from "../events.js";
import { startTask } from "./start-task.js";
import { done, explore, plan, scenarioPolicy, write } from "./testing/scenario.js";

const git = (dir: string, ...args: string[]) => execa("git", args, { cwd: dir }).then((r) => r.stdout.trim());

describe("a file written into the parent's worktree between two merges", () => {
  it("is committed as the parent's work and the next child still merges", async () => {
    // The parent works in `dir` (no run branch). Child B runs without a sandbox: once child A is
    // merged into the parent, B writes the file it is about to add into the parent's worktree too,
    // as an untracked file. Its own merge must not fail on it.
    const dir = await createTestRepo({ "README.md": "# r\n" });
    const stray = `while [ ! -e '${dir}/src/part-A.ts' ]; do sleep 0.05; done; printf 'export const b = 1;\\n' > '${dir}/src/part-B.ts'`;
    const server = await startMessagesServer({
      policy: scenarioPolicy({
        root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Part A" }, { title: "Part B" }])], complete_task: [done("All merged.")] },
        A: { complete_task: [write("src/part-A.ts", "export const a = 1;\n"), done("A written.")] },
        B: { complete_task: [reply.toolUse("run_command", { command: stray }), write("src/part-B.ts", "export const b = 1;\n"), done("B written.")] },
      }),
    });
    const events: KeenEvent[] = [];
    try {
      const workspace = await LocalWorkspace.open(dir, { sandbox: false });
      const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
      const run = startTask({ vision: "Build the parts", workspace, model, branch: false, maxConcurrency: 2, limits: { maxDepth: 1, maxChildren: 2 } });
      for await (const event of run) events.push(event);
      const result = await run.result;
      expect(result.status, result.summary).toBe("success");
    } finally {
      await server.close();
    }
    const merges = events.filter((event): event is Extract<KeenEvent, { type: "git.merge" }> => event.type === "git.merge");
    expect(merges.map((merge) => [merge.branch.split("/").pop(), merge.result])).toEqual([
      [expect.stringContaining("A"), "merged"],
      [expect.stringContaining("B"), "merged"],
    ]);
    expect(await git(dir, "show", "HEAD:src/part-A.ts")).toBe("export const a = 1;");
    expect(await git(dir, "show", "HEAD:src/part-B.ts")).toBe("export const b = 1;");
    // The stray copy went in as the parent's own commit before B's merge, and B's merge followed it.
    const subjects = (await git(dir, "log", "--format=%s", "--first-parent")).split("\n");
    const own = subjects.findIndex((subject) => /^keen: root work before merging .*B$/.test(subject));
    expect(own).toBeGreaterThan(0);
    expect(subjects[own - 1]).toMatch(/^Merge .*B: Part B/);
    expect(await git(dir, "status", "--porcelain")).toBe("");
  });
});
