import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import type { KeenEvent, KeenEventOf } from "../events.js";
import { anthropic } from "../model/anthropic.js";
import { reply, requestPosition, startMessagesServer, type MessagesServer } from "../testing/index.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo } from "../workspace/test-repo.js";
import { resumeTask, startTask, type TaskOptions } from "./start-task.js";
import type { TaskSnapshot } from "./task-state.js";
import { agentOf, done, explore, plan, scenarioPolicy, write, type Scenario } from "./testing/scenario.js";

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function setup(scenario: Scenario, files: Record<string, string> = { "README.md": "# app\n" }, hooks?: Parameters<typeof scenarioPolicy>[1]) {
  server = await startMessagesServer({ policy: scenarioPolicy(scenario, hooks) });
  const dir = await createTestRepo(files);
  const workspace = await LocalWorkspace.open(dir);
  const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { baseDelayMs: 5, maxRetries: 1 } });
  return { dir, workspace, model, server };
}

async function runTask(base: Awaited<ReturnType<typeof setup>>, extra: Partial<TaskOptions> = {}) {
  const run = startTask({ vision: "Build the feature", workspace: base.workspace, model: base.model, ...extra });
  const events: KeenEvent[] = [];
  for await (const event of run) events.push(event);
  return { run, events, result: await run.result };
}

const ofType = <T extends KeenEvent["type"]>(events: KeenEvent[], type: T) => events.filter((e): e is KeenEventOf<T> => e.type === type);
const base64 = async (dir: string, path: string) => (await readFile(join(dir, path))).toString("base64");
const git = (dir: string, ...args: string[]) => execa("git", args, { cwd: dir }).then((r) => r.stdout.trim());

describe("startTask", () => {
  it("runs a 3-level tree with parallel children, named branches and clean merges", async () => {
    const base = await setup({
      root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Docs" }, { title: "Code" }])], complete_task: [done("All merged.")] },
      A: {
        finish_explore: [explore("PLAN")],
        submit_plan: [plan([{ title: "Guide" }])],
        complete_task: [write("docs/index.md", "# Docs\n- guide.md\n"), done("Docs index written.")],
      },
      "A-A": { complete_task: [write("docs/guide.md", "# Guide\n"), done("Guide written.")] },
      B: { complete_task: [write("src/feature.js", "export const feature = 1;\n"), reply.toolUse("list_files", {}), reply.toolUse("list_files", {}), done("Feature added.")] },
    });
    const { result, events } = await runTask(base);
    expect(result.status).toBe("success");
    expect(result.summary).toBe("All merged.");

    const spawned = ofType(events, "agent.spawned").map((e) => [e.agentId, e.parentId, e.branch, e.depth]);
    expect(spawned).toEqual([
      ["root", null, "main", 0],
      ["A", "root", "summon-A", 1],
      ["B", "root", "summon-B", 1],
      ["A-A", "A", "summon-A-A", 2],
    ]);
    expect(ofType(events, "git.branch").map((e) => [e.branch, e.from])).toEqual([
      ["summon-A", "main"],
      ["summon-B", "main"],
      ["summon-A-A", "summon-A"],
    ]);
    expect(ofType(events, "git.merge").map((e) => [e.branch, e.into, e.result])).toEqual([
      ["summon-A-A", "summon-A", "merged"],
      ["summon-A", "main", "merged"],
      ["summon-B", "main", "merged"],
    ]);
    // A and B ran at the same time: B asked the model before A finished.
    const requests = base.server.requests.map((r) => agentOf(r.body));
    expect(requests.indexOf("B")).toBeLessThan(requests.lastIndexOf("A"));
    // Main holds everyone's work; the child branches are kept; no worktrees are left behind.
    for (const file of ["docs/index.md", "docs/guide.md", "src/feature.js"]) expect(await base.workspace.exists(file)).toBe(true);
    expect(await git(base.dir, "branch", "--format=%(refname:short)")).toBe("main\nsummon-A\nsummon-A-A\nsummon-B");
    expect((await git(base.dir, "worktree", "list")).split("\n")).toHaveLength(1);
    expect(await git(base.dir, "status", "--porcelain")).toBe("");
    // Phases in order for a planning agent.
    expect(ofType(events, "agent.phase").filter((e) => e.agentId === "A").map((e) => e.phase)).toEqual(["EXPLORE", "PLAN", "SUMMON", "COMPLETE"]);
    const completed = ofType(events, "agent.completed");
    expect(completed.map((e) => e.agentId)).toEqual(expect.arrayContaining(["A-A", "A", "B", "root"]));
    expect(completed.at(-1)!.agentId).toBe("root");
    // Root usage includes its descendants.
    const rootUsage = completed.at(-1)!.usage.outputTokens;
    expect(rootUsage).toBe(ofType(events, "model.usage").reduce((n, e) => n + e.usage.outputTokens, 0));
    expect(ofType(events, "run.completed")[0]!.usage.outputTokens).toBe(rootUsage);
  });

  it("offers each phase only its own tools", async () => {
    const base = await setup({ root: { finish_explore: [explore("PLAN")], submit_plan: [plan([])] } });
    await runTask(base);
    const toolsOf = (i: number) => base.server.requests[i]!.body.tools.map((t: { name: string }) => t.name).sort();
    expect(toolsOf(0)).toEqual(["finish_explore", "list_files", "read_file", "run_command", "search_files"]);
    expect(toolsOf(1)).toEqual(["list_files", "read_file", "run_command", "search_files", "submit_plan"]);
    expect(toolsOf(2)).toEqual(["complete_task", "edit_file", "list_files", "read_file", "run_command", "search_files", "write_file"]);
    // The first message carries the project overview.
    expect(base.server.requests[0]!.body.messages[0].content[0].text).toMatch(/Repository overview:[\s\S]*README\.md/);
  });

  it("resolves a merge conflict with the parent model", async () => {
    const base = await setup(
      {
        root: {
          finish_explore: [explore("PLAN")],
          submit_plan: [plan([{ title: "One" }, { title: "Two" }])],
          complete_merge: [write("shared.txt", "one and two\n"), reply.toolUse("complete_merge", { summary: "Kept both." })],
        },
        A: { complete_task: [write("shared.txt", "one\n"), done()] },
        B: { complete_task: [write("shared.txt", "two\n"), done()] },
      },
      { "shared.txt": "base\n" },
    );
    const { result, events } = await runTask(base);
    expect(result.error).toBeUndefined();
    expect(result.status).toBe("success");
    const merges = ofType(events, "git.merge");
    expect(merges.map((e) => [e.branch, e.result, e.conflictedFiles])).toEqual([
      ["summon-A", "merged", []],
      ["summon-B", "resolved", ["shared.txt"]],
    ]);
    expect(await readFile(join(base.dir, "shared.txt"), "utf8")).toBe("one and two\n");
    expect(await git(base.dir, "status", "--porcelain")).toBe("");
    expect((await git(base.dir, "log", "-1", "--format=%P", merges[1]!.sha!)).split(" ")).toHaveLength(2);
  });

  it("rolls a conflicting merge back under policy rollback and keeps the child branch", async () => {
    const base = await setup(
      {
        root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }, { title: "Two" }])] },
        A: { complete_task: [write("shared.txt", "one\n"), done()] },
        B: { complete_task: [write("shared.txt", "two\n"), done()] },
      },
      { "shared.txt": "base\n" },
    );
    const { result, events } = await runTask(base, { onConflict: "rollback" });
    expect(result.status).toBe("success");
    expect(ofType(events, "git.merge").map((e) => [e.branch, e.result])).toEqual([
      ["summon-A", "merged"],
      ["summon-B", "rolled_back"],
    ]);
    expect(await readFile(join(base.dir, "shared.txt"), "utf8")).toBe("one\n");
    expect(await git(base.dir, "show", "summon-B:shared.txt")).toBe("two");
    expect(await git(base.dir, "status", "--porcelain")).toBe("");
    expect(base.server.requests.some((r) => r.body.tools.some((t: { name: string }) => t.name === "complete_merge"))).toBe(false);
  });

  it("rolls back a merge whose validation fails, and tells the parent", async () => {
    const base = await setup({
      root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Good" }, { title: "Bad" }], "test ! -e bad.txt")] },
      A: { complete_task: [write("good.txt", "ok\n"), done()] },
      B: { complete_task: [write("bad.txt", "breaks validation\n"), done()] },
    });
    const { result, events } = await runTask(base, { onConflict: "rollback" });
    expect(result.status).toBe("success");
    expect(ofType(events, "validation.result").map((e) => e.passed)).toEqual([true, false, true]);
    expect(ofType(events, "git.merge").map((e) => e.result)).toEqual(["merged", "rolled_back"]);
    expect(await base.workspace.exists("good.txt")).toBe(true);
    expect(await base.workspace.exists("bad.txt")).toBe(false);
    const report = JSON.stringify(base.server.requests.at(-1)!.body.messages);
    expect(report).toMatch(/B \\"Bad\\" on summon-B: success, rolled back \(branch kept\)/);
  });

  it("treats a failed child as data: not merged, reported, the run goes on", async () => {
    const base = await setup({
      root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Works" }, { title: "Fails" }])] },
      A: { complete_task: [write("a.txt", "a\n"), done()] },
      B: { complete_task: [write("b.txt", "half\n"), done("Could not finish", "failed")] },
    });
    const { result, events } = await runTask(base);
    expect(result.status).toBe("success");
    expect(ofType(events, "git.merge").map((e) => e.branch)).toEqual(["summon-A"]);
    expect(ofType(events, "agent.completed").find((e) => e.agentId === "B")!.status).toBe("failed");
    expect(await git(base.dir, "show", "summon-B:b.txt")).toBe("half");
    expect(await base.workspace.exists("b.txt")).toBe(false);
    expect(JSON.stringify(base.server.requests.at(-1)!.body.messages)).toContain("B \\\"Fails\\\" on summon-B: failed, not merged. Could not finish");
  });

  it("gives one reminder to a model that answers without a tool, then fails the phase", async () => {
    const recovering = await setup({ root: { finish_explore: [reply.text("I looked."), explore("COMPLETE")] } });
    expect((await runTask(recovering)).result.status).toBe("success");
    await server!.close();
    const stubborn = await setup({ root: { finish_explore: [reply.text("I looked."), reply.text("Still talking.")] } });
    const { result } = await runTask(stubborn);
    expect(result.status).toBe("failed");
    expect(result.error?.message).toMatch(/ended EXPLORE without calling finish_explore/);
  });

  describe("limits", () => {
    it("maxChildren and maxAgents cut extra subtasks, with events", async () => {
      const base = await setup({ root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "1" }, { title: "2" }, { title: "3" }])] } });
      const { events } = await runTask(base, { limits: { maxChildren: 2, maxAgents: 2 } });
      expect(ofType(events, "limit.reached").map((e) => e.limit)).toEqual(["maxChildren", "maxAgents"]);
      expect(ofType(events, "agent.spawned")).toHaveLength(2);
    });

    it("maxDepth turns a request to plan into COMPLETE", async () => {
      const base = await setup({ root: { finish_explore: [explore("PLAN")] } });
      const { events, result } = await runTask(base, { limits: { maxDepth: 0 } });
      expect(result.status).toBe("success");
      expect(ofType(events, "limit.reached").map((e) => e.limit)).toEqual(["maxDepth"]);
      expect(ofType(events, "agent.phase").map((e) => e.phase)).toEqual(["EXPLORE", "COMPLETE"]);
    });

    it("maxTurnsPerPhase fails an agent that never closes its phase", async () => {
      const base = await setup({ root: { finish_explore: Array.from({ length: 10 }, () => reply.toolUse("list_files", {})) } });
      const { events, result } = await runTask(base, { limits: { maxTurnsPerPhase: 3 } });
      expect(result.status).toBe("failed");
      expect(ofType(events, "limit.reached").map((e) => [e.limit, e.value])).toEqual([["maxTurns", 3]]);
      expect(base.server.requests).toHaveLength(3);
    });

    it("a spent token budget stops every agent and keeps their work on their branches", async () => {
      const base = await setup({
        root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }, { title: "Two" }])] },
        A: { complete_task: [write("a.txt", "a\n"), ...Array.from({ length: 20 }, () => reply.toolUse("list_files", {}))] },
        B: { complete_task: [write("b.txt", "b\n"), ...Array.from({ length: 20 }, () => reply.toolUse("list_files", {}))] },
      });
      const { events, result } = await runTask(base, { limits: { tokenBudget: 25_000 } });
      expect(result.status).toBe("failed");
      expect(result.error?.code).toBe("token_budget");
      expect(ofType(events, "limit.reached").map((e) => e.limit)).toEqual(["tokenBudget"]);
      const statuses = Object.fromEntries(ofType(events, "agent.completed").map((e) => [e.agentId, e.status]));
      expect(statuses).toEqual({ A: "aborted", B: "aborted", root: "aborted" });
      expect(await git(base.dir, "show", "summon-A:a.txt")).toBe("a");
      expect(await git(base.dir, "show", "summon-B:b.txt")).toBe("b");
      const totals = ofType(events, "model.usage").map((e) => e.usage.inputTokens + e.usage.outputTokens + e.usage.cacheCreationInputTokens + e.usage.cacheReadInputTokens);
      const spent = totals.reduce((n, t) => n + t, 0);
      // Checked before sending: the run stops near the budget, over it by at most the requests already in flight (one per running child).
      expect(spent).toBeGreaterThan(25_000 / 2);
      expect(spent).toBeLessThanOrEqual(25_000 + 2 * Math.max(...totals));
    });
  });

  describe("the user's validation", () => {
    it("always runs: a plan's own command is added, never used instead (root only)", async () => {
      const base = await setup({ root: { finish_explore: [explore("PLAN")], submit_plan: [plan([], "true")], complete_task: [write("x.txt", "x\n"), done()] } });
      const { result, events } = await runTask(base, { validation: { command: "test -e never-there.txt" } });
      const checks = ofType(events, "validation.result").map((e) => [e.command, e.source, e.passed]);
      expect(checks).toContainEqual(["test -e never-there.txt", "user", false]);
      expect(result.status).toBe("failed");
    });

    it("always runs in a tree: a plan validation of `true` cannot let a breaking child through", async () => {
      const base = await setup({
        root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Good" }, { title: "Bad" }], "true")] },
        A: { complete_task: [write("good.txt", "ok\n"), done()] },
        B: { complete_task: [write("bad.txt", "breaks\n"), done()] },
      });
      const { events } = await runTask(base, { onConflict: "rollback", validation: { command: "test ! -e bad.txt" } });
      // B's own completion already runs the user's check (the plan's `true` beside it) and fails it: B is never merged.
      const ofB = ofType(events, "validation.result").filter((e) => e.agentId === "B");
      expect(ofB.map((e) => `${e.source}:${e.command}:${e.passed}`)).toContain("user:test ! -e bad.txt:false");
      expect(ofType(events, "agent.completed").find((e) => e.agentId === "B")!.status).toBe("failed");
      expect(ofType(events, "git.merge").map((e) => [e.branch, e.result])).toEqual([["summon-A", "merged"]]);
      const ofRoot = ofType(events, "validation.result").filter((e) => e.agentId === "root");
      expect(ofRoot.map((e) => `${e.source}:${e.command}:${e.passed}`)).toEqual(expect.arrayContaining(["user:test ! -e bad.txt:true", "plan:true:true"]));
      expect(await base.workspace.exists("bad.txt")).toBe(false);
    });
  });

  it("checks the token budget before sending: a budget smaller than the first request sends nothing", async () => {
    const base = await setup({ root: { finish_explore: [explore("COMPLETE")] } });
    const { result, events } = await runTask(base, { limits: { tokenBudget: 100 } });
    expect(base.server.requests).toHaveLength(0);
    expect(result.status).toBe("failed");
    expect(result.error?.code).toBe("token_budget");
    expect(ofType(events, "limit.reached").map((e) => e.limit)).toEqual(["tokenBudget"]);
  });

  it("after a budget stop mid-tree, every child worktree is disposed", async () => {
    const base = await setup({
      root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }, { title: "Two" }, { title: "Three" }])] },
      A: { complete_task: Array.from({ length: 30 }, () => reply.toolUse("list_files", {})) },
      B: { complete_task: Array.from({ length: 30 }, () => reply.toolUse("list_files", {})) },
      C: { complete_task: Array.from({ length: 30 }, () => reply.toolUse("list_files", {})) },
    });
    const { result } = await runTask(base, { limits: { tokenBudget: 20_000 }, maxConcurrency: 3 });
    expect(result.error?.code).toBe("token_budget");
    expect((await git(base.dir, "worktree", "list")).split("\n")).toHaveLength(1);
  });

  it("refuses a subtask title with control characters (the model is told), and keeps every child's work", async () => {
    const base = await setup({
      root: {
        finish_explore: [explore("PLAN")],
        submit_plan: [plan([{ title: "Bad\u0000title\u001b[2J" }]), plan([{ title: "Good title" }])],
      },
      A: { complete_task: [write("a.txt", "a\n"), done("Done\u0000 with \u0007 bells")] },
    });
    const { result, events } = await runTask(base);
    expect(result.status).toBe("success");
    const refused = ofType(events, "tool.completed").find((e) => e.name === "submit_plan" && e.isError);
    expect(refused?.output).toMatch(/control characters/);
    expect(ofType(events, "git.merge").map((e) => [e.branch, e.result])).toEqual([["summon-A", "merged"]]);
    expect(await git(base.dir, "show", "summon-A:a.txt")).toBe("a");
  });

  it("announces each child (agent.spawned) before its git.branch event", async () => {
    const base = await setup({ root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }, { title: "Two" }])] } });
    const { events } = await runTask(base);
    for (const id of ["A", "B"]) {
      const spawned = events.find((e) => e.type === "agent.spawned" && e.agentId === id)!;
      const branch = events.find((e) => e.type === "git.branch" && e.agentId === id)!;
      expect(spawned.seq).toBeLessThan(branch.seq);
    }
  });

  it("ends interrupted, not error, when the model stays overloaded after its retries, and resumes from there", async () => {
    let overloaded = true;
    const policy = scenarioPolicy({
      root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }])] },
      A: { complete_task: [write("a.txt", "a\n"), write("a2.txt", "a2\n"), done()] },
    });
    server = await startMessagesServer({
      policy: (request, context) => {
        const { agent, turn } = requestPosition(request);
        if (overloaded && agent === "A" && turn === 1) return reply.error(529);
        return policy(request, context);
      },
    });
    const dir = await createTestRepo({ "README.md": "# app\n" });
    const workspace = await LocalWorkspace.open(dir);
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { baseDelayMs: 5, maxRetries: 1 } });
    let saved: TaskSnapshot | undefined;
    const first = await startTask({ vision: "Build", workspace, model, onSnapshot: (s) => void (saved = s) }).result;
    expect(first.status).toBe("interrupted");
    expect(first.error?.code).toBe("model_error");
    expect(saved!.agents.find((a) => a.id === "root")!.phase).not.toBe("DONE");
    expect(saved!.agents.find((a) => a.id === "A")!.phase).toBe("COMPLETE");
    expect(await git(dir, "show", "summon-A:a.txt")).toBe("a");
    expect((await git(dir, "worktree", "list")).split("\n")).toHaveLength(1);

    overloaded = false;
    const second = await resumeTask(saved!, { workspace, model }).result;
    expect(second.status).toBe("success");
    expect(await base64(dir, "a2.txt")).toBe(Buffer.from("a2\n").toString("base64"));
  });

  describe("on a run branch", () => {
    it("never writes the user's checkout: a dirty repository keeps every byte and its status; the result is on keen/<id>", async () => {
      const base = await setup({
        root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }])], complete_task: [write("root.txt", "root\n"), done()] },
        A: { complete_task: [write("a.txt", "a\n"), done()] },
      });
      await writeFile(join(base.dir, "README.md"), "# app\nwork in progress\n");
      await writeFile(join(base.dir, ".env.local"), "ANTHROPIC_API_KEY=sk-ant-secret\n");
      const statusBefore = await git(base.dir, "status", "--porcelain");
      const headBefore = await git(base.dir, "rev-parse", "HEAD");
      const { result, events } = await runTask(base, { branch: true, runId: "run_1a2b3c4d-0000-4000-8000-000000000000" });
      expect(result.status).toBe("success");
      expect(result.branch).toBe("keen/1a2b3c4d");
      expect(await git(base.dir, "status", "--porcelain")).toBe(statusBefore);
      expect(await git(base.dir, "rev-parse", "HEAD")).toBe(headBefore);
      expect(await git(base.dir, "branch", "--show-current")).toBe("main");
      expect(await readFile(join(base.dir, "README.md"), "utf8")).toBe("# app\nwork in progress\n");
      expect(await readFile(join(base.dir, ".env.local"), "utf8")).toBe("ANTHROPIC_API_KEY=sk-ant-secret\n");
      expect(await base.workspace.exists("a.txt")).toBe(false);
      // The run branch holds the work, and none of the user's uncommitted files.
      const files = (await git(base.dir, "ls-tree", "-r", "--name-only", "keen/1a2b3c4d")).split("\n");
      expect(files).toEqual(["README.md", "a.txt", "root.txt"]);
      expect(await git(base.dir, "show", "keen/1a2b3c4d:README.md")).toBe("# app");
      expect(ofType(events, "agent.spawned").map((e) => [e.agentId, e.branch])).toEqual([
        ["root", "keen/1a2b3c4d"],
        ["A", "keen/1a2b3c4d-agents/summon-A"],
      ]);
      const completed = ofType(events, "run.completed")[0]!;
      expect(completed).toMatchObject({ branch: "keen/1a2b3c4d", head: await git(base.dir, "rev-parse", "keen/1a2b3c4d") });
      expect(completed.costUsd).toBeGreaterThan(0);
      expect((await git(base.dir, "worktree", "list")).split("\n")).toHaveLength(1);
    });

    it("a second run starts fresh from the moved HEAD: every child sees the new commits", async () => {
      const scenario = {
        root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }])] },
        A: { complete_task: [write("a.txt", "a\n"), done()] },
      };
      const base = await setup(scenario);
      const first = await runTask(base, { branch: true });
      expect(first.result.status).toBe("success");
      await writeFile(join(base.dir, "moved.txt"), "new on main\n");
      await git(base.dir, "add", "moved.txt");
      await git(base.dir, "commit", "-qm", "main moved");
      const second = await runTask(base, { branch: true });
      expect(second.result.status).toBe("success");
      expect(second.result.branch).not.toBe(first.result.branch);
      const child = ofType(second.events, "agent.spawned").find((e) => e.agentId === "A")!.branch;
      expect(child).toBe(`${second.result.branch}-agents/summon-A`);
      expect(await git(base.dir, "show", `${child}:moved.txt`)).toBe("new on main");
      expect(await git(base.dir, "show", `${second.result.branch}:moved.txt`)).toBe("new on main");
    });
  });

  it("stops at maxBudgetUsd, priced from keen's table", async () => {
    const base = await setup({ root: { finish_explore: Array.from({ length: 30 }, () => reply.toolUse("list_files", {})) } });
    const { result, events } = await runTask(base, { limits: { maxBudgetUsd: 0.01 } });
    expect(result.status).toBe("failed");
    expect(result.error?.code).toBe("cost_budget");
    expect(ofType(events, "limit.reached").map((e) => e.limit)).toEqual(["costBudget"]);
    expect(ofType(events, "run.completed")[0]!.costUsd).toBeLessThanOrEqual(0.01 * 1.5);
  });

  it("aborts mid-tree: every agent stops, work is committed, the run is aborted", async () => {
    let abort: () => void = () => {};
    const base = await setup(
      {
        root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }, { title: "Two" }])] },
        A: { complete_task: [write("a.txt", "a\n"), reply.slow(5_000, done())] },
        B: { complete_task: [write("b.txt", "b\n"), reply.slow(5_000, done())] },
      },
      undefined,
      { onRequest: (agent, phase, turn) => { if (agent === "B" && phase === "complete_task" && turn === 1) setTimeout(() => abort(), 100); } },
    );
    const run = startTask({ vision: "Build", workspace: base.workspace, model: base.model });
    abort = () => run.abort("stop now");
    const started = Date.now();
    const result = await run.result;
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(result.status).toBe("aborted");
    expect(result.error).toEqual({ code: "aborted", message: "stop now" });
    expect(result.agents.map((a) => a.status)).toEqual(["aborted", "aborted", "aborted"]);
    expect(await git(base.dir, "show", "summon-B:b.txt")).toBe("b");
    expect((await git(base.dir, "log", "-1", "--format=%B", "summon-B"))).toContain("Status: aborted");
  });
});
