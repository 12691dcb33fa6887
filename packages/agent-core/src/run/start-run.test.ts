import { execa } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import { KeenEvent, type KeenEventOf } from "../events.js";
import { anthropic } from "../model/anthropic.js";
import { reply, startMessagesServer, type MessagesServer, type ReplyPolicy, type ScriptedReply } from "../testing/index.js";
import { builtinTools } from "../tools/index.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo, hostPidsRunning } from "../workspace/test-repo.js";
import { runBranchName } from "../lifecycle/engine.js";
import { startRun, type RunOptions } from "./start-run.js";

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function setup(source: { script?: ScriptedReply[]; policy?: ReplyPolicy }, files?: Record<string, string>) {
  server = await startMessagesServer(source);
  const dir = await createTestRepo(files);
  const workspace = await LocalWorkspace.open(dir);
  const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { baseDelayMs: 5, maxRetries: 2 } });
  return { dir, workspace, model, server };
}

function go(base: Awaited<ReturnType<typeof setup>>, vision: string, extra: Partial<RunOptions> = {}) {
  return startRun({ vision, workspace: base.workspace, model: base.model, tools: builtinTools(), ...extra });
}

describe("startRun", () => {
  it("runs a tool loop to completion, commits, and emits ordered, valid events", async () => {
    const base = await setup({
      script: [
        reply.toolUse("list_files", {}),
        reply.toolUse("write_file", { path: "src/add.js", content: "export const add = (a, b) => a + b;\n" }),
        reply.toolUse("run_command", { command: "node -e \"import('./src/add.js').then(m => console.log(m.add(2, 3)))\"" }),
        reply.text("Added src/add.js; it prints 5."),
      ],
    });
    const headBefore = await base.workspace.head();
    const run = go(base, "Add an add function");
    const seen: KeenEvent[] = [];
    for await (const event of run) seen.push(event);
    const result = await run.result;

    // The work is on the run's own branch; the checkout's branch and HEAD are where they were.
    expect(result).toMatchObject({ status: "success", summary: "Added src/add.js; it prints 5.", branch: runBranchName(true, run.runId) });
    expect(result.branch).toMatch(/^keen\/[0-9a-f]{8}$/);
    expect(result.commit).toMatch(/^[0-9a-f]{40}$/);
    expect((await execa("git", ["rev-parse", result.branch], { cwd: base.dir })).stdout).toBe(result.commit);
    expect((await execa("git", ["rev-parse", "HEAD"], { cwd: base.dir })).stdout).toBe(headBefore);
    expect((await execa("git", ["branch", "--show-current"], { cwd: base.dir })).stdout).toBe("main");
    expect(await base.workspace.exists("src/add.js")).toBe(false);
    expect(seen.map((e) => e.seq)).toEqual(seen.map((_, i) => i));
    for (const event of seen) expect(KeenEvent.parse(JSON.parse(JSON.stringify(event)))).toEqual(event);
    const types = seen.map((e) => e.type);
    expect(types[0]).toBe("run.started");
    expect(types.at(-1)).toBe("run.completed");
    expect(types.filter((t) => t === "model.usage")).toHaveLength(4);
    // Every tool call starts before it completes, in order, with the same id.
    const started = seen.filter((e): e is KeenEventOf<"tool.started"> => e.type === "tool.started");
    const completed = seen.filter((e): e is KeenEventOf<"tool.completed"> => e.type === "tool.completed");
    expect(started.map((e) => e.name)).toEqual(["list_files", "write_file", "run_command"]);
    expect(completed.map((e) => e.toolUseId)).toEqual(started.map((e) => e.toolUseId));
    for (const [i, event] of started.entries()) expect(event.seq).toBeLessThan(completed[i]!.seq);
    expect(completed[2]!.output).toContain("5\n");
    expect(completed.every((e) => !e.isError)).toBe(true);
    // The commit holds the work.
    const show = await execa("git", ["show", "--stat", "--format=%s", result.branch], { cwd: base.dir });
    expect(show.stdout).toContain("Add an add function");
    expect(show.stdout).toContain("src/add.js");
    // Usage in the final event is the sum of the per-request usage events.
    const usageEvents = seen.filter((e): e is KeenEventOf<"model.usage"> => e.type === "model.usage");
    const summed = usageEvents.reduce((n, e) => n + e.usage.outputTokens, 0);
    expect(result.usage.outputTokens).toBe(summed);
    expect(usageEvents.at(-1)!.agentTotal.outputTokens).toBe(summed);
  });

  it("shows the model invalid tool input and unknown tools as errors, and keeps going", async () => {
    const base = await setup({
      script: [reply.toolUse("read_file", { path: 42 }), reply.toolUse("teleport", {}), reply.toolUse("read_file", { path: "missing.txt" }), reply.text("gave up")],
    });
    const run = go(base, "try things");
    const result = await run.result;
    expect(result.status).toBe("success");
    const toolResults = base.server.requests.slice(1).map((r) => r.body.messages.at(-1).content[0]);
    expect(toolResults[0]).toMatchObject({ type: "tool_result", is_error: true });
    expect(toolResults[0].content).toMatch(/Invalid input for read_file: path:/);
    expect(toolResults[1].content).toMatch(/Unknown tool "teleport"/);
    expect(toolResults[2].content).toMatch(/File not found: missing.txt/);
  });

  it("passes thinking and redacted thinking back unchanged through a tool loop", async () => {
    const base = await setup({
      script: [
        reply.blocks(reply.thinking("I should list the files."), reply.redactedThinking(), reply.toolUseBlock("list_files", {})),
        reply.blocks(reply.thinking("Now read the README."), reply.toolUseBlock("read_file", { path: "README.md" })),
        reply.text("The README is short."),
      ],
    });
    const run = go(base, "summarise the readme", { thinking: { budgetTokens: 2048 }, maxTokens: 8000 });
    const result = await run.result;
    // The server rejects any altered signature or redacted data with a 400, so success proves preservation.
    expect(result.status).toBe("success");
    const last = base.server.requests.at(-1)!.body;
    expect(last.thinking).toEqual({ type: "enabled", budget_tokens: 2048 });
    const assistantTurns = last.messages.filter((m: { role: string }) => m.role === "assistant");
    expect(assistantTurns[0].content.map((b: { type: string }) => b.type)).toEqual(["thinking", "redacted_thinking", "tool_use"]);
    expect(assistantTurns[1].content[0].thinking).toBe("Now read the README.");
  });

  it("reads at least 90% of input tokens from the prompt cache after the first request of a long conversation", async () => {
    const turns = 30;
    const base = await setup(
      { policy: (_request, { index }) => (index < turns - 1 ? reply.toolUse("read_file", { path: `docs/page-${index % 5}.md` }) : reply.text("done")) },
      {
        // The API caches no prefix under 1024 tokens: the README (in the overview of the system prompt) makes tools + system longer.
        "README.md": `# Docs\n\n${"How the documentation is organised and kept up to date. ".repeat(30)}\n`,
        ...Object.fromEntries(Array.from({ length: 5 }, (_, i) => [`docs/page-${i}.md`, `# Page ${i}\n${"Some documentation text. ".repeat(4)}\n`])),
      },
    );
    const result = await go(base, "read the docs", { maxTurns: turns + 5 }).result;
    expect(result.status).toBe("success");
    const usages = base.server.requests.map((r) => r.usage!);
    expect(usages).toHaveLength(turns);
    for (const [i, usage] of usages.slice(1).entries()) {
      const total = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens;
      expect(usage.cache_read_input_tokens / total, `request ${i + 2}`).toBeGreaterThanOrEqual(0.9);
    }
  });

  it("fails cleanly with limit.reached when the turn limit is hit", async () => {
    const base = await setup({ policy: () => reply.toolUse("list_files", {}) });
    const run = go(base, "loop forever", { maxTurns: 3 });
    const limits: string[] = [];
    run.on("limit.reached", (event) => limits.push(`${event.limit}=${event.value}`));
    const result = await run.result;
    expect(result.status).toBe("failed");
    expect(result.error).toEqual({ code: "max_turns", message: "Agent root did not finish RUN within 3 turns" });
    expect(limits).toEqual(["maxTurns=3"]);
    expect(base.server.requests).toHaveLength(3);
  });

  it("aborts mid-stream promptly with status aborted and keeps what was done", async () => {
    const base = await setup({
      script: [reply.toolUse("write_file", { path: "partial.txt", content: "half\n" }), reply.slow(0, reply.text("x ".repeat(500)), 100)],
    });
    const run = go(base, "slow task");
    run.on("tool.completed", () => setTimeout(() => run.abort("user pressed stop"), 150));
    const started = Date.now();
    const result = await run.result;
    expect(result.status).toBe("aborted");
    expect(result.error).toEqual({ code: "aborted", message: "user pressed stop" });
    expect(Date.now() - started).toBeLessThan(2_000);
    const events = run.events.history;
    expect(events.at(-1)).toMatchObject({ type: "run.completed", status: "aborted" });
    const show = await execa("git", ["show", "--stat", "--format=%b", result.branch], { cwd: base.dir });
    expect(show.stdout).toContain("partial.txt");
    expect(show.stdout).toContain("Status: aborted");
  });

  it("kills a running command's process tree when aborted", async () => {
    // A unique sleep argument finds the background process on the host, sandboxed or not.
    const needle = `30.${process.pid}7`;
    const base = await setup({ script: [reply.toolUse("run_command", { command: `sleep ${needle} & wait` }), reply.text("never")] });
    const run = go(base, "long command");
    let seen = false;
    run.on("tool.started", async () => {
      for (let i = 0; i < 250 && !seen; i++) {
        seen = hostPidsRunning(needle).length > 0;
        if (!seen) await new Promise((r) => setTimeout(r, 20));
      }
      run.abort();
    });
    const result = await run.result;
    expect(seen).toBe(true);
    expect(result.status).toBe("aborted");
    let alive = hostPidsRunning(needle).length > 0;
    for (let i = 0; i < 100 && alive; i++) {
      await new Promise((r) => setTimeout(r, 20));
      alive = hostPidsRunning(needle).length > 0;
    }
    expect(alive).toBe(false);
  });

  it("ends interrupted (resumable) with a typed code when the model stays overloaded after its retries", async () => {
    const base = await setup({ script: [reply.error(529), reply.error(529), reply.error(529)] });
    const run = go(base, "anything");
    const retries: number[] = [];
    run.on("model.retry", (event) => retries.push(event.attempt));
    const result = await run.result;
    expect(result.status).toBe("interrupted");
    expect(result.error?.code).toBe("model_unavailable");
    expect(result.error?.message).toMatch(/529 overloaded_error/);
    expect(retries).toEqual([1, 2]);
    expect(result.commit).toBeNull();
  });

  it("exposes events read-only: a consumer that breaks off or tries to close them cannot break the run", async () => {
    const base = await setup({ script: [reply.toolUse("list_files", {}), reply.text("done")] });
    const run = go(base, "list");
    expect((run.events as unknown as { close?: unknown }).close).toBeUndefined();
    expect((run.events as unknown as { emit?: unknown }).emit).toBeUndefined();
    for await (const event of run) if (event.type === "run.started") break; // an early return() from one consumer
    const texts: string[] = [];
    run.on("model.text", (event) => texts.push(event.text)); // typed: event.text is a string
    const result = await run.result;
    expect(result.status).toBe("success");
    expect(texts).toEqual(["done"]);
    const all: string[] = [];
    for await (const event of run.events.iterate()) all.push(event.type);
    expect(all.at(-1)).toBe("run.completed");
  });

  it("refuses an empty vision", async () => {
    const base = await setup({ script: [] });
    expect(() => go(base, "  ")).toThrow(/vision/);
  });

  it("leaves work uncommitted only in a checkout it works in (branch: false); on a run branch commit: false is a config error", async () => {
    const base = await setup({ script: [reply.toolUse("write_file", { path: "draft.txt", content: "draft\n" }), reply.text("drafted")] });
    // The run branch's worktree goes away at the end: uncommitted work there would be lost.
    expect(() => go(base, "draft", { commit: false })).toThrow(expect.objectContaining({ code: "config_error", message: expect.stringMatching(/branch: false/) }));
    const result = await go(base, "draft", { commit: false, branch: false }).result;
    expect(result).toMatchObject({ status: "success", branch: "main", commit: null });
    expect(await base.workspace.readFile("draft.txt")).toBe("draft\n");
  });
});
