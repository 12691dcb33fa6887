// A new run lists its start commit's files for the repository overview while its worktree is
// being made: the first request then waits for no listing of the new worktree.
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { anthropic } from "../model/anthropic.js";
import { reply, startMessagesServer } from "../testing/index.js";
import { withGitTrace, type GitTraceEvent } from "../workspace/git-trace.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo } from "../workspace/test-repo.js";
import { startTask } from "./start-task.js";
import { done, explore, scenarioPolicy } from "./testing/scenario.js";
import { OVERVIEW_HEADING } from "./prompts.js";

const git = (dir: string, ...args: string[]) => execa("git", args, { cwd: dir }).then((r) => r.stdout.trim());
/** The git commands the trace saw start, in order, with the time each started. */
function gitStarts(events: GitTraceEvent[]): Array<{ command: string; at: number }> {
  return events
    .filter((event) => event.event === "start" && event.argv)
    .map((event) => ({ command: event.argv!.filter((arg, i, all) => arg !== "-c" && all[i - 1] !== "-c")[1] ?? "", at: Date.parse(event.time!) }));
}

describe("the repository overview of a new run", () => {
  it("lists the start commit, not the user's uncommitted files, and not from the new worktree", async () => {
    const dir = await createTestRepo({ "README.md": "# r\n", "src/app.ts": "export {};\n", "docs/guide.md": "# g\n" });
    // The user's checkout holds more than its HEAD: none of it is the run's.
    await writeFile(join(dir, "scratch.txt"), "mine\n");
    await git(dir, "rm", "-q", "--cached", "docs/guide.md");
    const server = await startMessagesServer({ policy: scenarioPolicy({ root: { finish_explore: [explore("COMPLETE")], complete_task: [done("Nothing to do.")] } }) });
    try {
      const workspace = await LocalWorkspace.open(dir, { sandbox: false });
      const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
      const { value: result, events } = await withGitTrace(() => startTask({ vision: "Look around", workspace, model }).result);
      expect(result.status, result.summary).toBe("success");
      const first = server.requests.find((request) => request.path === "/v1/messages")!;
      const system = (first.body.system as Array<{ text: string }>).map((block) => block.text).join("\n");
      const overview = system.slice(system.indexOf(OVERVIEW_HEADING));
      expect(overview).toContain("docs/guide.md");
      expect(overview).toContain("src/app.ts");
      expect(overview).not.toContain("scratch.txt");
      // Listed from the commit (ls-tree, beside the checkout) before the first request; the new worktree was not listed.
      const before = gitStarts(events).filter((start) => start.at <= first.receivedAt).map((start) => start.command);
      expect(before).toContain("ls-tree");
      expect(before).not.toContain("ls-files");
    } finally {
      await server.close();
    }
    expect(await readFile(join(dir, "scratch.txt"), "utf8")).toBe("mine\n");
    expect(await git(dir, "status", "--porcelain")).toBe("D  docs/guide.md\n?? docs/\n?? scratch.txt");
  });

  it("is listed by the worktree when the run carries over uncommitted work", async () => {
    const dir = await createTestRepo({ "README.md": "# r\n" });
    await writeFile(join(dir, "carried.txt"), "mine\n");
    const server = await startMessagesServer({ policy: scenarioPolicy({ root: { finish_explore: [explore("COMPLETE")], complete_task: [done("Nothing to do.")] } }) });
    try {
      const workspace = await LocalWorkspace.open(dir, { sandbox: false });
      const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
      const result = await startTask({ vision: "Look around", workspace, model, includeUncommitted: true }).result;
      expect(result.status, result.summary).toBe("success");
      const first = server.requests.find((request) => request.path === "/v1/messages")!;
      const system = (first.body.system as Array<{ text: string }>).map((block) => block.text).join("\n");
      expect(system.slice(system.indexOf(OVERVIEW_HEADING))).toContain("carried.txt");
    } finally {
      await server.close();
    }
  });
});
