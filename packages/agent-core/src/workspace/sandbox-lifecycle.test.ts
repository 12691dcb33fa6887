import { existsSync } from "node:fs";
import { join } from "node:path";
import { execa } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import { startTask } from "../lifecycle/start-task.js";
import { done, explore, plan, scenarioPolicy } from "../lifecycle/testing/scenario.js";
import { anthropic } from "../model/anthropic.js";
import { reply, startMessagesServer, type MessagesServer } from "../testing/index.js";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const run = (command: string) => reply.toolUse("run_command", { command });

/** The tool_result texts the model received, in order. */
function toolResults(requests: MessagesServer["requests"]): string[] {
  const seen = new Set<string>();
  const results: string[] = [];
  for (const request of requests) {
    for (const message of request.body.messages as Array<{ role: string; content: unknown }>) {
      if (message.role !== "user" || !Array.isArray(message.content)) continue;
      for (const block of message.content as Array<{ type: string; tool_use_id?: string; content?: unknown }>) {
        if (block.type !== "tool_result" || seen.has(block.tool_use_id!)) continue;
        seen.add(block.tool_use_id!);
        results.push(typeof block.content === "string" ? block.content : JSON.stringify(block.content));
      }
    }
  }
  return results;
}

describe("the sandbox in a task tree", () => {
  it("keeps EXPLORE's run_command read-only and a child's commands inside its worktree", async () => {
    const dir = await createTestRepo({ "README.md": "# app\n" });
    const escape = join(dir, "escaped.txt");
    server = await startMessagesServer({
      policy: scenarioPolicy({
        root: {
          finish_explore: [run("echo hacked > explore.txt"), run("git log --oneline"), explore("PLAN")],
          submit_plan: [run("echo planned > plan.txt"), plan([{ title: "Alpha" }])],
          complete_task: [done("Merged.")],
        },
        A: {
          complete_task: [run(`echo out > '${escape}'`), run("echo ok > alpha.txt && echo wrote-alpha"), run("node -e \"require('dns').lookup('example.com', (e) => console.log('dns ' + (e ? e.code : 'resolved')))\""), done("Alpha done.")],
        },
      }),
    });
    const workspace = await LocalWorkspace.open(dir);
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { baseDelayMs: 5, maxRetries: 1 } });
    const task = startTask({ vision: "Build it", workspace, model });
    const result = await task.result;
    expect(result.status, result.error?.message).toBe("success");

    const results = toolResults(server.requests);
    const resultOf = (label: string) => results.find((text) => text.includes(label)) ?? `no result mentions ${label}`;
    expect(resultOf("explore.txt")).toContain("Read-only file system"); // EXPLORE could not write
    expect(resultOf("initial")).toContain("exit code 0"); // but could read git history
    expect(resultOf("plan.txt")).toContain("Read-only file system"); // nor could PLAN
    // The child cannot write the main checkout: it does not even see it (only its git dir), and what
    // it writes at that path stays in the sandbox's private folders (checked on the host below).
    expect(resultOf("wrote-alpha")).toContain("exit code 0"); // but can write its own worktree
    expect(resultOf("dns ")).not.toContain("resolved"); // and has no network

    expect(existsSync(escape)).toBe(false);
    const files = (await execa("git", ["ls-tree", "-r", "--name-only", result.branch], { cwd: dir })).stdout.split("\n");
    expect(files.sort()).toEqual(["README.md", "alpha.txt"]);
  });
});
