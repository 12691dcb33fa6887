import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { anthropic } from "../model/anthropic.js";
import { reply, requestPosition, startMessagesServer } from "../testing/index.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "../workspace/test-repo.js";
import { startTask } from "./start-task.js";
import { done, explore, plan, scenarioPolicy, write } from "./testing/scenario.js";

const git = async (dir: string, ...args: string[]) => (await execa("git", args, { cwd: dir, env: TEST_GIT_IDENTITY })).stdout.trim();

/** The text of every tool result an agent received, in order. */
function toolResults(requests: Array<{ body: Record<string, any> }>, agent: string): string[] {
  const last = requests.filter((r) => requestPosition(r.body).agent === agent).at(-1)!;
  return last.body.messages
    .flatMap((m: { content: unknown }) => (Array.isArray(m.content) ? m.content : []))
    .filter((block: { type: string }) => block.type === "tool_result")
    .map((block: { content: unknown }) => (typeof block.content === "string" ? block.content : JSON.stringify(block.content)))
    .filter((text: string) => !text.startsWith("Exploration finished"));
}

describe("a subtask that names its paths", () => {
  it("runs in a worktree holding only those paths, is told so, and merges into the whole tree", async () => {
    const dir = await createTestRepo({ "README.md": "# app\n", "src/a/one.ts": "1\n", "src/b/two.ts": "2\n" });
    const server = await startMessagesServer({
      policy: scenarioPolicy({
        root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Part A", paths: ["src/a/"] }, { title: "Part B" }])], complete_task: [done("Merged.")] },
        A: {
          complete_task: [
            reply.toolUse("list_files", {}),
            reply.toolUse("read_file", { path: "README.md" }),
            write("src/a/new.ts", "export const a = 1;\n"),
            done("A written."),
          ],
        },
        B: { complete_task: [reply.toolUse("list_files", {}), write("src/b/new.ts", "export const b = 1;\n"), done("B written.")] },
      }),
    });
    try {
      const workspace = await LocalWorkspace.open(dir, { sandbox: false });
      const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
      const result = await startTask({ vision: "Build both parts", workspace, model, limits: { maxDepth: 1 }, runId: "run_5b5b5b5b-0000-4000-8000-000000000000" }).result;
      expect(result.status).toBe("success");

      const [listedA, readmeA] = toolResults(server.requests, "A");
      expect(listedA).toContain("This worktree holds only src/a");
      expect(listedA).toContain("src/a/one.ts");
      expect(listedA).not.toContain("src/b/two.ts");
      expect(readmeA).toContain("outside this agent's paths (src/a)");
      // The subtask without paths sees the whole checkout.
      const [listedB] = toolResults(server.requests, "B");
      expect(listedB).toContain("README.md");
      expect(listedB).not.toContain("holds only");

      // The result is on the run branch; the user's checkout stays as it was.
      const files = (await git(dir, "ls-tree", "-r", "--name-only", "keen/5b5b5b5b")).split("\n").sort();
      expect(await git(dir, "ls-tree", "-r", "--name-only", "HEAD")).toBe("README.md\nsrc/a/one.ts\nsrc/b/two.ts");
      expect(files).toEqual(["README.md", "src/a/new.ts", "src/a/one.ts", "src/b/new.ts", "src/b/two.ts"]);
    } finally {
      await server.close();
    }
  });
});
