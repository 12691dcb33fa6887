import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa, type ResultPromise } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import { reply, requestPosition, startMessagesServer, type MessagesServer } from "../testing/index.js";
import { createTestRepo } from "../workspace/test-repo.js";
import { done, explore, plan, scenarioPolicy, write, type Scenario } from "./testing/scenario.js";

const entry = fileURLToPath(new URL("./testing/task-process.ts", import.meta.url));
const repoRoot = fileURLToPath(new URL("../../../..", import.meta.url));

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

function taskProcess(config: Record<string, unknown>): ResultPromise {
  return execa(process.execPath, ["--import", "tsx", entry, JSON.stringify(config)], { cwd: repoRoot, reject: false, timeout: 60_000 });
}

/** The text of the tool results in `agent`'s last request. */
function toolResults(requests: Array<{ body: Record<string, any> }>, agent: string): string[] {
  const last = requests.filter((r) => requestPosition(r.body).agent === agent).at(-1)!;
  return last.body.messages
    .flatMap((m: { content: unknown }) => (Array.isArray(m.content) ? m.content : []))
    .filter((block: { type: string }) => block.type === "tool_result")
    .map((block: { content: unknown }) => (typeof block.content === "string" ? block.content : JSON.stringify(block.content)));
}

const repoFiles = { "README.md": "# app\n", "lib/keep.ts": "keep\n", "src/one.ts": "1\n" };

const scenario: Scenario = {
  root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Alpha", paths: ["src"] }])], complete_task: [done("Merged.")] },
  A: {
    complete_task: [
      write("src/a.ts", "a\n"),
      reply.toolUse("list_files", {}),
      reply.toolUse("run_command", { command: "find . -path ./.git -prune -o -type f -print | sort" }),
      done("Alpha done."),
    ],
  },
};

describe("a sparse child resumed after SIGKILL", () => {
  it("gets a sparse worktree again, and its merge deletes no file outside its paths", async () => {
    const calls: string[] = [];
    let child: ResultPromise | undefined;
    let killed = false;
    server = await startMessagesServer({
      policy: scenarioPolicy(scenario, {
        onRequest: async (agent, phase, turn) => {
          calls.push(`${killed ? "after" : "before"}:${agent}:${phase}:${turn}`);
          if (!killed && agent === "A" && phase === "complete_task" && turn === 1) {
            killed = true;
            child!.kill("SIGKILL");
            await new Promise((resolve) => setTimeout(resolve, 200));
          }
        },
      }),
    });
    const repo = await createTestRepo(repoFiles);
    const snapshotPath = join(await mkdtemp(join(tmpdir(), "keen-snap-")), "run.json");
    const runId = "run_5a5a5a5a-0000-4000-8000-000000000000";
    child = taskProcess({ mode: "start", repo, baseURL: server.url, snapshotPath, vision: "Build it", runId });
    expect((await child).signal).toBe("SIGKILL");

    // The resumed process finds A's worktree abandoned: recovery removes it and A is re-attached.
    const resumed = await taskProcess({ mode: "resume", repo, baseURL: server.url, snapshotPath, vision: "Build it" });
    expect(resumed.exitCode, String(resumed.stderr)).toBe(0);
    expect(calls.filter((c) => c.startsWith("after:A:"))).toContain("after:A:complete_task:2");

    const listed = toolResults(server.requests, "A").find((text) => text.includes("holds only"))!;
    expect(listed).toContain("src/a.ts");
    expect(listed).toContain("holds only src");
    expect(listed).not.toContain("README.md");
    expect(listed).not.toContain("lib/keep.ts");
    // On disk too: the files outside its paths are not checked out.
    const found = toolResults(server.requests, "A").find((text) => text.includes("./src/a.ts"))!;
    expect(found).toContain("./src/one.ts");
    expect(found).not.toContain("README.md");
    expect(found).not.toContain("keep.ts");

    const files = (await execa("git", ["ls-tree", "-r", "--name-only", "keen/5a5a5a5a"], { cwd: repo })).stdout.split("\n").sort();
    expect(files).toEqual(["README.md", "lib/keep.ts", "src/a.ts", "src/one.ts"]);
  }, 120_000);
});
