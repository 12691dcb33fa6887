import { afterEach, describe, expect, it } from "vitest";
import type { KeenEvent, KeenEventOf } from "../events.js";
import { anthropic } from "../model/anthropic.js";
import { COMPACTED_SUMMARY_HEADER, conversationProblem } from "../run/context.js";
import { flattenRequest } from "../testing/prompt-cache.js";
import { reply, startMessagesServer, type MessagesServer, type RecordedRequest, type ReplyPolicy, type ScriptedReply } from "../testing/index.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo } from "../workspace/test-repo.js";
import { resumeTask, startTask, type TaskOptions } from "./start-task.js";
import type { TaskSnapshot } from "./task-state.js";
import { agentOf, phaseOf } from "./testing/scenario.js";

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const ofType = <T extends KeenEvent["type"]>(events: KeenEvent[], type: T) => events.filter((e): e is KeenEventOf<T> => e.type === type);
const inputTotal = (r: RecordedRequest) => r.usage!.input_tokens + r.usage!.cache_creation_input_tokens + r.usage!.cache_read_input_tokens;

/** Replies per agent and phase, in order; the turn is counted per agent and phase (agents run one request at a time). */
function phasePolicy(replies: Record<string, Record<string, (turn: number) => ScriptedReply>>): ReplyPolicy {
  const turns = new Map<string, number>();
  return (request) => {
    const agent = agentOf(request);
    const phase = phaseOf(request);
    const key = `${agent}/${phase}`;
    const turn = turns.get(key) ?? 0;
    turns.set(key, turn + 1);
    const pick = replies[agent]?.[phase];
    if (!pick) throw new Error(`no replies for ${key}`);
    return pick(turn);
  };
}

function files(count: number): Record<string, string> {
  const out: Record<string, string> = { "README.md": "# app\n" };
  for (let i = 0; i < count; i++) out[`src/part${i}.ts`] = Array.from({ length: 100 }, (_, line) => `export const part${i}_${line} = "${"v".repeat(20)}";`).join("\n");
  return out;
}

const read = (i: number, thought?: string) =>
  thought ? reply.blocks(reply.thinking(thought), reply.toolUseBlock("read_file", { path: `src/part${i}.ts` })) : reply.toolUse("read_file", { path: `src/part${i}.ts` });
const explore = (next: "PLAN" | "COMPLETE", thought?: string) => {
  const call = reply.toolUseBlock("finish_explore", { summary: "Explored.", confidence: 0.9, next_phase: next });
  return thought ? reply.blocks(reply.thinking(thought), call) : reply.blocks(call);
};

async function run(options: Partial<TaskOptions>, policy: ReplyPolicy, fileCount: number) {
  server = await startMessagesServer({ policy });
  const workspace = await LocalWorkspace.open(await createTestRepo(files(fileCount)));
  const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { maxRetries: 0 } });
  const task = startTask({ vision: "Tidy the parts", workspace, model, ...options });
  const events: KeenEvent[] = [];
  for await (const event of task) events.push(event);
  return { events, result: await task.result, workspace, model };
}

describe("context across the lifecycle", () => {
  const treeReplies = (): Record<string, Record<string, (turn: number) => ScriptedReply>> => ({
      root: {
        finish_explore: (t) => (t < 4 ? read(t) : explore("PLAN")),
        submit_plan: (t) => (t < 1 ? read(4) : reply.toolUse("submit_plan", { approach: "Split.", subtasks: [{ title: "One", instructions: "Do one" }, { title: "Two", instructions: "Do two" }] })),
        complete_task: (t) => (t < 2 ? read(t) : reply.toolUse("complete_task", { summary: "All done.", status: "success" })),
      },
      A: {
        finish_explore: (t) => (t < 3 ? read(t) : explore("COMPLETE")),
        complete_task: (t) => (t < 2 ? reply.toolUse("write_file", { path: `a${t}.txt`, content: "a\n" }) : reply.toolUse("complete_task", { summary: "A done.", status: "success" })),
      },
      B: {
        finish_explore: (t) => (t < 3 ? read(t + 2) : explore("COMPLETE")),
        complete_task: (t) => (t < 2 ? reply.toolUse("write_file", { path: `b${t}.txt`, content: "b\n" }) : reply.toolUse("complete_task", { summary: "B done.", status: "success" })),
      },
    });

  /** Share of all input tokens read from the cache, and the requests, after checking every request was accepted. */
  function cacheReadRatio(): { ratio: number; requests: RecordedRequest[] } {
    const requests = server!.requests.filter((r) => r.path === "/v1/messages");
    expect(requests.every((r) => r.status === 200)).toBe(true);
    const total = requests.reduce((n, r) => n + inputTotal(r), 0);
    const cached = requests.reduce((n, r) => n + r.usage!.cache_read_input_tokens, 0);
    return { ratio: cached / total, requests };
  }

  it("keeps the prompt cache effective across phases and agents of a tree", async () => {
    const { result } = await run({ maxConcurrency: 1 }, phasePolicy(treeReplies()), 6);
    expect(result.error).toBeUndefined();
    expect(result.status).toBe("success");
    const { ratio, requests } = cacheReadRatio();
    // Phase changes swap the tool list, which the cache keys on first; the conversation still
    // reads most of its input from the cache.
    expect(ratio).toBeGreaterThanOrEqual(0.6);
    // Within a phase every request after the first reads everything the previous one sent.
    for (const [i, request] of requests.entries()) {
      const previous = requests.slice(0, i).reverse().find((r) => agentOf(r.body) === agentOf(request.body));
      if (previous && phaseOf(previous.body) === phaseOf(request.body)) {
        expect(request.usage!.cache_read_input_tokens, `request ${i}`).toBeGreaterThanOrEqual(inputTotal(previous));
      }
    }
    // The system prompt is the same for every agent and phase, so tools + system stay cacheable.
    expect(new Set(requests.map((r) => JSON.stringify(r.body.system))).size).toBe(1);
    console.log(`cache-read ratio across ${requests.length} requests of a 3-agent, multi-phase run (tools per phase): ${(ratio * 100).toFixed(1)}%`);
  });

  it("with stableTools, shows one tool list in every phase, refuses out-of-phase calls, and reads more from the cache", async () => {
    const replies = treeReplies();
    const explore = replies.root!.finish_explore!;
    // First the root tries to write while exploring.
    replies.root!.finish_explore = (t) => (t === 0 ? reply.toolUse("write_file", { path: "early.txt", content: "too soon\n" }) : explore(t - 1));
    const { result, workspace } = await run({ maxConcurrency: 1, stableTools: true }, phasePolicy(replies), 6);
    expect(result.error).toBeUndefined();
    expect(result.status).toBe("success");
    const { ratio, requests } = cacheReadRatio();
    expect(new Set(requests.map((r) => JSON.stringify(r.body.tools))).size).toBe(1);
    expect(requests[0]!.body.tools.map((t: { name: string }) => t.name)).toEqual([
      "read_file", "list_files", "search_files", "write_file", "edit_file", "run_command",
      "finish_explore", "submit_plan", "complete_task", "complete_merge",
    ]);
    const refusal = requests[1]!.body.messages.at(-1).content[0];
    expect(refusal).toMatchObject({ type: "tool_result", is_error: true });
    expect(refusal.content).toMatch(/^write_file cannot be used at this point\. Tools you can use now: read_file, list_files, search_files/);
    await expect(workspace.readFile("early.txt")).rejects.toThrow();
    // Only each agent's first request misses the conversation part of the prefix.
    expect(ratio).toBeGreaterThanOrEqual(0.8);
    console.log(`cache-read ratio across ${requests.length} requests of a 3-agent, multi-phase run (stable tools): ${(ratio * 100).toFixed(1)}%`);
  });

  it("prunes an agent's conversation across phases, saves the pruned conversation in snapshots, and resumes from it", async () => {
    const thought = (t: number) => `Part ${t % 6} next. ${"Thinking it through. ".repeat(60)}`;
    const policy = phasePolicy({
      root: {
        finish_explore: (t) => (t < 12 ? read(t % 6, thought(t)) : explore("COMPLETE", "Enough reading.")),
        complete_task: (t) =>
          t < 2
            ? reply.blocks(reply.thinking(thought(t)), reply.toolUseBlock("write_file", { path: `out${t}.txt`, content: "done\n" }))
            : reply.blocks(reply.thinking("Finish."), reply.toolUseBlock("complete_task", { summary: "Tidied.", status: "success" })),
      },
    });
    const snapshots: TaskSnapshot[] = [];
    const contextWindow = 12_000;
    const { events, result, workspace, model } = await run(
      { contextWindow, thinking: { budgetTokens: 1024 }, maxTokens: 2048, onSnapshot: (snapshot) => void snapshots.push(snapshot) },
      policy,
      6,
    );
    expect(result.error).toBeUndefined();
    expect(result.status).toBe("success");
    const requests = server!.requests;
    expect(requests.filter((r) => r.status !== 200)).toEqual([]);

    const pruned = ofType(events, "context.pruned");
    expect(pruned.length).toBeGreaterThanOrEqual(2);
    for (const event of pruned) {
      expect(event.agentId).toBe("root");
      expect(event.tokensBefore).toBeGreaterThanOrEqual(Math.min(0.8 * contextWindow, contextWindow - 2048));
      expect(event.tokensAfter).toBeLessThan(event.tokensBefore);
    }
    expect(pruned.some((e) => e.compactedMessages > 0)).toBe(true);
    // After each pruning the next request still reads tools, system prompt and the task from the cache.
    const afterPrunings = requests.flatMap((r, i) => (r.path === "/v1/messages/count_tokens" ? [requests[i + 1]!] : []));
    expect(afterPrunings).toHaveLength(pruned.length);
    for (const request of afterPrunings) {
      const blocks = flattenRequest(request.body);
      const taskEnd = request.body.tools.length + request.body.system.length;
      const stablePrefix = blocks.slice(0, taskEnd + 1).reduce((n, b) => n + b.tokens, 0);
      expect(request.usage!.cache_read_input_tokens).toBeGreaterThanOrEqual(stablePrefix);
      expect(request.usage!.cache_read_input_tokens).toBeLessThan(inputTotal(request));
    }
    // No request came near the window, in any phase.
    for (const request of requests.filter((r) => r.path === "/v1/messages")) expect(inputTotal(request) + 2048).toBeLessThanOrEqual(contextWindow);

    // Snapshots hold the pruned conversation, valid as it is.
    for (const snapshot of snapshots) {
      const root = snapshot.agents.find((a) => a.id === "root");
      if (root && root.messages.length > 0) expect(conversationProblem(root.messages)).toBeNull();
    }
    const afterPruning = snapshots.find((s) => {
      const root = s.agents.find((a) => a.id === "root")!;
      return root.phase === "EXPLORE" && JSON.stringify(root.messages).includes(COMPACTED_SUMMARY_HEADER);
    });
    expect(afterPruning).toBeDefined();
    const final = snapshots.at(-1)!.agents.find((a) => a.id === "root")!;
    expect(JSON.stringify(final.messages)).toContain(COMPACTED_SUMMARY_HEADER);
    expect(final.messages.length).toBeLessThan(1 + 2 * 16);

    // A run resumed from a pruned snapshot continues from exactly that conversation.
    const before = requests.length;
    const savedMessages = structuredClone(afterPruning!.agents.find((a) => a.id === "root")!.messages);
    const resumed = resumeTask(afterPruning!, { workspace, model, contextWindow, thinking: { budgetTokens: 1024 }, maxTokens: 2048 });
    const resumedResult = await resumed.result;
    expect(resumedResult.error).toBeUndefined();
    expect(resumedResult.status).toBe("success");
    const later = requests.slice(before);
    expect(later.filter((r) => r.status !== 200)).toEqual([]);
    // Nothing is known about the size yet, and the conversation is large: it is counted first.
    expect(later[0]!.path).toBe("/v1/messages/count_tokens");
    const firstMessages = later.find((r) => r.path === "/v1/messages")!.body.messages;
    expect(firstMessages).toHaveLength(savedMessages.length);
    expect(JSON.stringify(firstMessages)).toContain(COMPACTED_SUMMARY_HEADER);
  });

  it("follows each agent's context on its own: a child with a long conversation is pruned, its parent is not", async () => {
    const policy = phasePolicy({
      root: {
        finish_explore: () => explore("PLAN"),
        submit_plan: () => reply.toolUse("submit_plan", { approach: "Delegate.", subtasks: [{ title: "Survey", instructions: "Read every part" }] }),
        complete_task: () => reply.toolUse("complete_task", { summary: "Merged the survey.", status: "success" }),
      },
      A: {
        finish_explore: (t) => (t < 14 ? read(t % 6) : explore("COMPLETE")),
        complete_task: (t) => (t < 1 ? reply.toolUse("write_file", { path: "survey.md", content: "# Survey\n" }) : reply.toolUse("complete_task", { summary: "Surveyed.", status: "success" })),
      },
    });
    const { events, result } = await run({ contextWindow: 10_000, maxTokens: 1024 }, policy, 6);
    expect(result.error).toBeUndefined();
    expect(result.status).toBe("success");
    expect(server!.requests.filter((r) => r.status !== 200)).toEqual([]);
    const pruned = ofType(events, "context.pruned");
    expect(pruned.length).toBeGreaterThanOrEqual(1);
    expect(new Set(pruned.map((e) => e.agentId))).toEqual(new Set(["A"]));
    expect(ofType(events, "git.merge").map((e) => e.result)).toEqual(["merged"]);
    // The child's requests stayed inside the window; the root's conversation was never touched.
    for (const request of server!.requests.filter((r) => r.path === "/v1/messages")) {
      expect(inputTotal(request) + 1024).toBeLessThanOrEqual(10_000);
      if (agentOf(request.body) === "root") expect(JSON.stringify(request.body.messages)).not.toContain("cleared to save context");
    }
  });
});
