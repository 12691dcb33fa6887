import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import { KeenEvent, type KeenEventOf } from "../events.js";
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

/** Runs get this id unless a test gives another: the run branch is `RUN`, the root's children are `child("A")`, … */
const RUN_ID = "run_1a2b3c4d-0000-4000-8000-000000000000";
const RUN = "keen/1a2b3c4d";
const child = (label: string) => `${RUN}-agents/summon-${label}`;

async function runTask(base: Awaited<ReturnType<typeof setup>>, extra: Partial<TaskOptions> = {}) {
  const run = startTask({ vision: "Build the feature", workspace: base.workspace, model: base.model, runId: RUN_ID, ...extra });
  const events: KeenEvent[] = [];
  for await (const event of run) events.push(event);
  return { run, events, result: await run.result };
}

const ofType = <T extends KeenEvent["type"]>(events: KeenEvent[], type: T) => events.filter((e): e is KeenEventOf<T> => e.type === type);
const base64 = async (dir: string, path: string) => (await readFile(join(dir, path))).toString("base64");
const git = (dir: string, ...args: string[]) => execa("git", args, { cwd: dir }).then((r) => r.stdout.trim());
/** Whether `ref` has `path` (the run's result lives on its branch, not in the checkout). */
const has = (dir: string, ref: string, path: string) => execa("git", ["cat-file", "-e", `${ref}:${path}`], { cwd: dir, reject: false }).then((r) => r.exitCode === 0);

/** Everything a run must leave alone in the user's checkout, byte for byte. */
async function checkoutState(dir: string) {
  const files: Record<string, string> = {};
  const walk = async (rel: string) => {
    for (const entry of await readdir(join(dir, rel), { withFileTypes: true })) {
      const path = rel ? `${rel}/${entry.name}` : entry.name;
      if (path === ".git") continue;
      if (entry.isDirectory()) await walk(path);
      else files[path] = (await readFile(join(dir, path))).toString("base64");
    }
  };
  await walk("");
  return {
    files,
    status: (await execa("git", ["status", "--porcelain", "--untracked-files=all"], { cwd: dir })).stdout,
    index: await git(dir, "ls-files", "--stage"),
    staged: await git(dir, "diff", "--cached"),
    stash: await git(dir, "stash", "list", "--format=%H %gs"),
    branch: await git(dir, "symbolic-ref", "HEAD"),
    head: await git(dir, "rev-parse", "HEAD"),
  };
}

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
    const start = await git(base.dir, "rev-parse", "HEAD");
    const { result, events } = await runTask(base);
    expect(result.status).toBe("success");
    expect(result.summary).toBe("All merged.");
    expect(result.branch).toBe(RUN);

    const spawned = ofType(events, "agent.spawned").map((e) => [e.agentId, e.parentId, e.branch, e.depth]);
    expect(spawned).toEqual([
      ["root", null, RUN, 0],
      ["A", "root", child("A"), 1],
      ["B", "root", child("B"), 1],
      ["A-A", "A", child("A-A"), 2],
    ]);
    expect(ofType(events, "git.branch").map((e) => [e.branch, e.from])).toEqual([
      [RUN, start],
      [child("A"), RUN],
      [child("B"), RUN],
      [child("A-A"), child("A")],
    ]);
    expect(ofType(events, "git.merge").map((e) => [e.branch, e.into, e.result])).toEqual([
      [child("A-A"), child("A"), "merged"],
      [child("A"), RUN, "merged"],
      [child("B"), RUN, "merged"],
    ]);
    // A and B ran at the same time: B asked the model before A finished.
    const requests = base.server.requests.map((r) => agentOf(r.body));
    expect(requests.indexOf("B")).toBeLessThan(requests.lastIndexOf("A"));
    // The run branch holds everyone's work, main is where it was; the child branches are kept;
    // no worktrees are left behind.
    for (const file of ["docs/index.md", "docs/guide.md", "src/feature.js"]) {
      expect(await has(base.dir, RUN, file)).toBe(true);
      expect(await base.workspace.exists(file)).toBe(false);
    }
    expect(await git(base.dir, "rev-parse", "main")).toBe(start);
    expect((await git(base.dir, "branch", "--format=%(refname:short)")).split("\n")).toEqual([RUN, child("A"), child("A-A"), child("B"), "main"]);
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
    // No snapshot location given: the event names none.
    expect(ofType(events, "run.completed")[0]).not.toHaveProperty("snapshot");
  });

  it("shows every lifecycle tool in every phase, and runs only the phase's own", async () => {
    const base = await setup({ root: { finish_explore: [write("early.txt", "no\n"), explore("PLAN")], submit_plan: [plan([])] } });
    await runTask(base);
    const requests = base.server.requests.filter((r) => r.path === "/v1/messages");
    const all = ["complete_merge", "complete_task", "edit_file", "finish_explore", "list_files", "read_file", "run_command", "search_files", "submit_plan", "write_file"];
    for (const request of requests) expect(request.body.tools.map((t: { name: string }) => t.name).sort()).toEqual(all);
    const allowed = (i: number) => String(requests[i]!.body.messages.at(-1).content[0].content).split("now: ")[1]!.split(", ").sort();
    expect(allowed(1)).toEqual(["finish_explore", "list_files", "read_file", "run_command", "search_files"]);
    await expect(base.workspace.readFile("early.txt")).rejects.toThrow();
    // The system prompt carries the project overview; the first message does not.
    expect(requests[0]!.body.system[0].text).toMatch(/Repository overview[^\n]*:[\s\S]*README\.md/);
    expect(requests[0]!.body.messages[0].content[0].text).not.toContain("README.md");
  });

  it("merges a child that changed nothing as a no-op instead of failing the run", async () => {
    const base = await setup({ root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }, { title: "Two" }])] } });
    const head = await base.workspace.head();
    const { result, events } = await runTask(base);
    expect(result.error).toBeUndefined();
    expect(result.status).toBe("success");
    // Both merges succeed and leave HEAD where it was: there was nothing to bring in.
    expect(ofType(events, "git.merge").map((e) => [e.branch, e.result, e.sha])).toEqual([
      [child("A"), "merged", head],
      [child("B"), "merged", head],
    ]);
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
      [child("A"), "merged", []],
      [child("B"), "resolved", ["shared.txt"]],
    ]);
    expect(await git(base.dir, "show", `${RUN}:shared.txt`)).toBe("one and two");
    expect(await readFile(join(base.dir, "shared.txt"), "utf8")).toBe("base\n");
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
      [child("A"), "merged"],
      [child("B"), "rolled_back"],
    ]);
    expect(await git(base.dir, "show", `${RUN}:shared.txt`)).toBe("one");
    expect(await git(base.dir, "show", `${child("B")}:shared.txt`)).toBe("two");
    expect(await git(base.dir, "status", "--porcelain")).toBe("");
    // No merge was handed to the model to resolve.
    expect(base.server.requests.some((r) => requestPosition(r.body).phase === "SUMMON")).toBe(false);
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
    expect(await has(base.dir, RUN, "good.txt")).toBe(true);
    expect(await has(base.dir, RUN, "bad.txt")).toBe(false);
    const report = JSON.stringify(base.server.requests.at(-1)!.body.messages);
    expect(report).toContain(`B \\"Bad\\" on ${child("B")}: success, rolled back (branch kept)`);
  });

  it("treats a failed child as data: not merged, reported, the run goes on", async () => {
    const base = await setup({
      root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Works" }, { title: "Fails" }])] },
      A: { complete_task: [write("a.txt", "a\n"), done()] },
      B: { complete_task: [write("b.txt", "half\n"), done("Could not finish", "failed")] },
    });
    const { result, events } = await runTask(base);
    expect(result.status).toBe("success");
    expect(ofType(events, "git.merge").map((e) => e.branch)).toEqual([child("A")]);
    expect(ofType(events, "agent.completed").find((e) => e.agentId === "B")!.status).toBe("failed");
    expect(await git(base.dir, "show", `${child("B")}:b.txt`)).toBe("half");
    expect(await has(base.dir, RUN, "b.txt")).toBe(false);
    expect(JSON.stringify(base.server.requests.at(-1)!.body.messages)).toContain(`B \\"Fails\\" on ${child("B")}: failed, not merged. Could not finish`);
  });

  it("gives one reminder to a model that answers without a tool, then fails the phase", async () => {
    const recovering = await setup({ root: { finish_explore: [reply.text("I looked."), explore("COMPLETE")] } });
    expect((await runTask(recovering)).result.status).toBe("success");
    await server!.close();
    const stubborn = await setup({ root: { finish_explore: [reply.text("I looked."), reply.text("Still talking.")] } });
    const { result } = await runTask(stubborn, { runId: "run_2b3c4d5e-0000-4000-8000-000000000000" });
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
      expect(await git(base.dir, "show", `${child("A")}:a.txt`)).toBe("a");
      expect(await git(base.dir, "show", `${child("B")}:b.txt`)).toBe("b");
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
      expect(ofType(events, "git.merge").map((e) => [e.branch, e.result])).toEqual([[child("A"), "merged"]]);
      const ofRoot = ofType(events, "validation.result").filter((e) => e.agentId === "root");
      expect(ofRoot.map((e) => `${e.source}:${e.command}:${e.passed}`)).toEqual(expect.arrayContaining(["user:test ! -e bad.txt:true", "plan:true:true"]));
      expect(await has(base.dir, RUN, "good.txt")).toBe(true);
      expect(await has(base.dir, RUN, "bad.txt")).toBe(false);
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
    expect(ofType(events, "git.merge").map((e) => [e.branch, e.result])).toEqual([[child("A"), "merged"]]);
    expect(await git(base.dir, "show", `${child("A")}:a.txt`)).toBe("a");
  });

  it("resumes only onto the run's own branches: a chosen name only when the caller vouches for it, never an edited snapshot's", async () => {
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
    await git(dir, "branch", "users-own");
    const workspace = await LocalWorkspace.open(dir);
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { baseDelayMs: 5, maxRetries: 1 } });
    let saved: TaskSnapshot | undefined;
    const first = await startTask({ vision: "Build", workspace, model, branch: "feature/x", onSnapshot: (s) => void (saved = s) }).result;
    expect(first.status).toBe("interrupted");
    overloaded = false;
    expect(() => resumeTask(saved!, { workspace, model })).toThrow(expect.objectContaining({ code: "config_error", message: expect.stringContaining("feature/x") }));
    const forged = JSON.parse(JSON.stringify(saved!).split('"feature/x').join('"users-own')) as TaskSnapshot;
    expect(() => resumeTask(forged, { workspace, model, runBranch: "feature/x" })).toThrow(expect.objectContaining({ code: "config_error" }));
    const child = JSON.parse(JSON.stringify(saved!).split('"feature/x-agents/summon-A"').join('"users-own"')) as TaskSnapshot;
    expect(() => resumeTask(child, { workspace, model, runBranch: "feature/x" })).toThrow(expect.objectContaining({ code: "config_error", message: expect.stringContaining("users-own") }));
    expect(await git(dir, "rev-parse", "users-own")).toBe(await git(dir, "rev-parse", "main"));
    const second = await resumeTask(saved!, { workspace, model, runBranch: "feature/x" }).result;
    expect(second.status).toBe("success");
    expect(await git(dir, "show", "feature/x:a2.txt")).toBe("a2");
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
    expect(first.error?.code).toBe("model_unavailable");
    expect(saved!.agents.find((a) => a.id === "root")!.phase).not.toBe("DONE");
    expect(saved!.agents.find((a) => a.id === "A")!.phase).toBe("COMPLETE");
    expect(await git(dir, "show", `${first.branch}-agents/summon-A:a.txt`)).toBe("a");
    expect((await git(dir, "worktree", "list")).split("\n")).toHaveLength(1);

    overloaded = false;
    const second = await resumeTask(saved!, { workspace, model }).result;
    expect(second.status).toBe("success");
    expect(second.branch).toBe(first.branch);
    expect(await git(dir, "show", `${second.branch}:a2.txt`)).toBe("a2");
    expect(await base64(dir, "README.md")).toBe(Buffer.from("# app\n").toString("base64"));
    expect(await workspace.exists("a2.txt")).toBe(false);
  });

  describe("on the run branch (the default)", () => {
    it("never writes the user's checkout: a dirty repository keeps every byte, its index, stash and branch; the result is on keen/<id>", async () => {
      const base = await setup(
        {
          root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }])], complete_task: [write("root.txt", "root\n"), done()] },
          A: { complete_task: [write("a.txt", "a\n"), write("README.md", "# app by A\n"), done()] },
        },
        { "README.md": "# app\n", "notes.txt": "notes\n", "parked.txt": "one\n" },
      );
      // A stash entry, a staged change, a modified tracked file and an untracked key.
      await writeFile(join(base.dir, "parked.txt"), "two\n");
      await git(base.dir, "stash", "push", "-q", "-m", "parked work");
      await writeFile(join(base.dir, "notes.txt"), "notes\nstaged\n");
      await git(base.dir, "add", "notes.txt");
      await writeFile(join(base.dir, "README.md"), "# app\nwork in progress\n");
      await writeFile(join(base.dir, ".env.local"), "ANTHROPIC_API_KEY=sk-ant-api03-0123456789abcdefghijklmnopqrstuvwxyz\n");
      const before = await checkoutState(base.dir);
      expect(before.status.split("\n").sort()).toEqual(["?? .env.local", "M  notes.txt", " M README.md"].sort());
      expect(before.stash).toContain("parked work");

      // No `branch` option: the library default.
      const { result, events } = await runTask(base, { snapshotLocation: "/srv/keen/runs/run-1.json" });
      expect(result.status).toBe("success");
      expect(result.branch).toBe(RUN);
      expect(await checkoutState(base.dir)).toEqual(before);
      // The run branch holds the work on top of the committed HEAD, none of the user's
      // uncommitted, staged, stashed or untracked files.
      expect(await git(base.dir, "merge-base", before.head, RUN)).toBe(before.head);
      expect((await git(base.dir, "ls-tree", "-r", "--name-only", RUN)).split("\n")).toEqual(["README.md", "a.txt", "notes.txt", "parked.txt", "root.txt"]);
      expect(await git(base.dir, "show", `${RUN}:README.md`)).toBe("# app by A");
      expect(await git(base.dir, "show", `${RUN}:notes.txt`)).toBe("notes");
      expect(await git(base.dir, "show", `${RUN}:parked.txt`)).toBe("one");
      expect(ofType(events, "agent.spawned").map((e) => [e.agentId, e.branch])).toEqual([
        ["root", RUN],
        ["A", child("A")],
      ]);
      expect(ofType(events, "run.started")[0]).toMatchObject({ branch: RUN });
      const completed = ofType(events, "run.completed")[0]!;
      expect(completed).toMatchObject({ branch: RUN, head: await git(base.dir, "rev-parse", RUN), snapshot: "/srv/keen/runs/run-1.json" });
      // The event as read back from the wire (the protocol's schema) keeps it.
      expect(KeenEvent.parse(JSON.parse(JSON.stringify(completed)))).toMatchObject({ snapshot: "/srv/keen/runs/run-1.json" });
      expect(completed.costUsd).toBeGreaterThan(0);
      expect((await git(base.dir, "worktree", "list")).split("\n")).toHaveLength(1);
    });

    it("a second run after main moved starts fresh from the new HEAD: every child sees the new commits", async () => {
      const scenario = {
        root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }, { title: "Two" }])] },
        A: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Deeper" }])], complete_task: [done()] },
        "A-A": { complete_task: [write("aa.txt", "aa\n"), done()] },
        B: { complete_task: [write("b.txt", "b\n"), done()] },
      };
      const base = await setup(scenario);
      const first = await runTask(base, { runId: "run_aaaaaaaa-0000-4000-8000-000000000000" });
      expect(first.result.status).toBe("success");
      await writeFile(join(base.dir, "moved.txt"), "new on main\n");
      await git(base.dir, "add", "moved.txt");
      await git(base.dir, "commit", "-qm", "main moved");
      const moved = await git(base.dir, "rev-parse", "HEAD");
      const second = await runTask(base, { runId: "run_bbbbbbbb-0000-4000-8000-000000000000" });
      expect(second.result.status).toBe("success");
      expect([first.result.branch, second.result.branch]).toEqual(["keen/aaaaaaaa", "keen/bbbbbbbb"]);
      const children = ofType(second.events, "agent.spawned").filter((e) => e.agentId !== "root");
      expect(children.map((e) => e.branch)).toEqual(["keen/bbbbbbbb-agents/summon-A", "keen/bbbbbbbb-agents/summon-B", "keen/bbbbbbbb-agents/summon-A-A"]);
      // Every child branch (and the run branch) was forked after main moved.
      for (const branch of [second.result.branch, ...children.map((e) => e.branch)]) {
        expect((await execa("git", ["merge-base", "--is-ancestor", moved, branch], { cwd: base.dir, reject: false })).exitCode).toBe(0);
        expect(await git(base.dir, "show", `${branch}:moved.txt`)).toBe("new on main");
      }
      // The first run's branches are left as they were, never reused.
      expect(await has(base.dir, "keen/aaaaaaaa-agents/summon-B", "moved.txt")).toBe(false);
      expect(await git(base.dir, "rev-parse", "main")).toBe(moved);
    });

    it("never commits a file an agent wrote that looks like a credential: it is left out and a git.skipped event names it", async () => {
      const base = await setup({
        root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }])], complete_task: [write(".env.production", "STRIPE_KEY=sk_live_0123456789abcdefghijklmnop\n"), write("src/app.js", "export {};\n"), done()] },
        A: { complete_task: [write("certs/server.pem", "-----BEGIN PRIVATE KEY-----\nMIIE\n"), write("a.txt", "a\n"), done()] },
      });
      const { result, events } = await runTask(base);
      expect(result.status).toBe("success");
      const skipped = ofType(events, "git.skipped").map((e) => [e.agentId, e.branch, e.files.map((f) => `${f.path}:${f.reason}`)]);
      expect(skipped).toEqual([
        ["A", child("A"), ["certs/server.pem:credential"]],
        ["root", RUN, [".env.production:credential"]],
      ]);
      for (const ref of [RUN, child("A")]) {
        expect(await has(base.dir, ref, "certs/server.pem")).toBe(false);
        expect(await has(base.dir, ref, ".env.production")).toBe(false);
      }
      expect(await has(base.dir, RUN, "a.txt")).toBe(true);
      expect(await has(base.dir, RUN, "src/app.js")).toBe(true);
    });

    it("refuses a run branch that exists instead of reusing it, and leaves it alone", async () => {
      const base = await setup({ root: { finish_explore: [explore("COMPLETE")], complete_task: [write("x.txt", "x\n"), done()] } });
      await git(base.dir, "branch", RUN);
      const before = await git(base.dir, "rev-parse", RUN);
      const { result } = await runTask(base);
      expect(result.status).toBe("error");
      expect(result.error?.code).toBe("branch_exists");
      expect(await git(base.dir, "rev-parse", RUN)).toBe(before);
      expect(base.server.requests).toHaveLength(0);
    });

    it("takes a branch name of the caller's, and works in the given checkout only with branch: false", async () => {
      const base = await setup({ root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }])] }, A: { complete_task: [write("a.txt", "a\n"), done()] } });
      const named = await runTask(base, { branch: "feature/dark-mode" });
      expect(named.result.branch).toBe("feature/dark-mode");
      expect(await has(base.dir, "feature/dark-mode", "a.txt")).toBe(true);
      expect(await has(base.dir, "feature/dark-mode-agents/summon-A", "a.txt")).toBe(true);
      expect(await base.workspace.exists("a.txt")).toBe(false);

      // A checkout keen owns (such as a throwaway clone) may be worked in directly.
      const owned = await createTestRepo({ "README.md": "# owned\n" });
      const ownedWorkspace = await LocalWorkspace.open(owned);
      const inPlace = await runTask({ ...base, dir: owned, workspace: ownedWorkspace }, { branch: false, runId: "run_cccccccc-0000-4000-8000-000000000000" });
      expect(inPlace.result.status).toBe("success");
      expect(inPlace.result.branch).toBe("main");
      expect(ofType(inPlace.events, "agent.spawned").map((e) => e.branch)).toEqual(["main", "summon-A"]);
      expect(await ownedWorkspace.readFile("a.txt")).toBe("a\n");
      expect(await git(owned, "status", "--porcelain")).toBe("");
    });

    it("refuses branch settings that cannot work with a ConfigError, before anything runs", () => {
      // A model with a context window, so each refusal below is the branch settings' own.
      const options = { vision: "Build", workspace: {} as TaskOptions["workspace"], model: { id: "m", contextWindow: 200_000 } as TaskOptions["model"] };
      expect(() => startTask({ ...options, branch: "" })).toThrow(expect.objectContaining({ code: "config_error" }));
      expect(() => startTask({ ...options, branch: 1 as never })).toThrow(expect.objectContaining({ code: "config_error" }));
      expect(() => startTask({ ...options, branch: false, base: "main" })).toThrow(expect.objectContaining({ code: "config_error" }));
      expect(() => startTask({ ...options, branch: false, includeUncommitted: true })).toThrow(expect.objectContaining({ code: "config_error" }));
      // Carried-over work sits on the checkout's HEAD: it cannot start from another base.
      expect(() => startTask({ ...options, base: "main", includeUncommitted: true })).toThrow(expect.objectContaining({ code: "config_error", message: expect.stringContaining("includeUncommitted") }));
      expect(() => startTask({ ...options, snapshotLocation: " " })).toThrow(expect.objectContaining({ code: "config_error", message: expect.stringContaining("snapshotLocation") }));
      expect(() => startTask({ ...options, snapshotLocation: 7 as never })).toThrow(expect.objectContaining({ code: "config_error" }));
    });

    it("starts from base when given, and carries uncommitted work only when asked, never a credential", async () => {
      const scenario = {
        root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }])] },
        A: { complete_task: [write("a.txt", "a\n"), done()] },
      };
      const base = await setup(scenario);
      const first = await git(base.dir, "rev-parse", "HEAD");
      await writeFile(join(base.dir, "later.txt"), "after the base\n");
      await git(base.dir, "add", "later.txt");
      await git(base.dir, "commit", "-qm", "later");
      const fromBase = await runTask(base, { base: first, runId: "run_dddddddd-0000-4000-8000-000000000000" });
      expect(fromBase.result.status).toBe("success");
      expect(ofType(fromBase.events, "git.branch").find((e) => e.agentId === "root")!.from).toBe(first);
      expect(await git(base.dir, "merge-base", first, fromBase.result.branch!)).toBe(first);
      expect(await git(base.dir, "ls-tree", "--name-only", fromBase.result.branch!)).not.toContain("later.txt");

      await writeFile(join(base.dir, "README.md"), "# app\nwork in progress\n");
      await writeFile(join(base.dir, ".env.local"), "ANTHROPIC_API_KEY=sk-ant-secret\n");
      const before = await checkoutState(base.dir);
      const carried = await runTask(base, { includeUncommitted: true, runId: "run_eeeeeeee-0000-4000-8000-000000000000" });
      expect(carried.result.error).toBeUndefined();
      expect(carried.result.status).toBe("success");
      const branch = carried.result.branch!;
      expect(await git(base.dir, "show", `${branch}:README.md`)).toBe("# app\nwork in progress");
      expect(await git(base.dir, "ls-tree", "--name-only", branch)).not.toContain(".env.local");
      expect(ofType(carried.events, "git.skipped").flatMap((e) => e.files)).toEqual([expect.objectContaining({ path: ".env.local", reason: "credential" })]);
      // The user's checkout is as it was.
      expect(await checkoutState(base.dir)).toEqual(before);
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
    expect(await git(base.dir, "show", `${result.branch}-agents/summon-B:b.txt`)).toBe("b");
    expect((await git(base.dir, "log", "-1", "--format=%B", `${result.branch}-agents/summon-B`))).toContain("Status: aborted");
  });
});
