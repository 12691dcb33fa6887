import { afterEach, describe, expect, it } from "vitest";
import { anthropic } from "../model/anthropic.js";
import { startRun } from "../run/start-run.js";
import { flattenRequest } from "../testing/prompt-cache.js";
import { builtinTools } from "../tools/index.js";
import { reply, requestPosition, startMessagesServer, type MessagesServer, type RecordedRequest, type ScriptedReply } from "../testing/index.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo } from "../workspace/test-repo.js";
import { AGENT_TAG_PATTERN } from "./agent-tag.js";
import { OVERVIEW_HEADING } from "./prompts.js";
import { startTask } from "./start-task.js";
import { done, explore, plan, scenarioPolicy, write, type Scenario } from "./testing/scenario.js";

/**
 * The default request layout against the offline server's prompt-cache simulation (which caches
 * nothing under the model's documented 1024-token minimum, like the API): tools and system
 * (with the repository overview) are one prefix shared by every agent and phase of a run; each
 * agent's own text comes after it.
 */

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const MODEL = "claude-sonnet-5-5";
const inputOf = (r: RecordedRequest) => r.usage!.input_tokens + r.usage!.cache_creation_input_tokens + r.usage!.cache_read_input_tokens;
const messageRequests = () => server!.requests.filter((r) => r.path === "/v1/messages");

/** Share of input read from the cache over requests 2..n (the first one has nothing to read). */
function cachedShare(requests: RecordedRequest[]): number {
  const later = requests.slice(1);
  return later.reduce((n, r) => n + r.usage!.cache_read_input_tokens, 0) / later.reduce((n, r) => n + inputOf(r), 0);
}

const README = [
  "# shop",
  "",
  "A small web shop: a catalogue of products, a basket, and a checkout that talks to a payment provider.",
  "",
  "## Layout",
  "Each module under src/ exports one value and has no side effects. Modules never import each other in cycles;",
  "shared helpers live in src/module-000. Tests sit next to the code they check and run with `npm test`.",
  "",
  "## Conventions",
  "- TypeScript, strict mode, ES modules, two-space indentation.",
  "- Public functions carry a doc comment with an example.",
  "- Money is kept in integer cents, never in floating point.",
  "- Every change keeps `npm test` green and adds a test when it changes behaviour.",
  "",
  "## Releasing",
  "Releases are cut from main after the checks pass; the changelog is written from the merged pull requests,",
  "one line per change, grouped by module. Version numbers follow semantic versioning.",
].join("\n");

function repoFiles(count: number): Record<string, string> {
  const files: Record<string, string> = { "README.md": README, "package.json": JSON.stringify({ name: "shop", scripts: { test: "node -e 0" } }) };
  for (let i = 0; i < count; i++) files[`src/module-${String(i).padStart(3, "0")}/index.ts`] = `export const value${i} = ${i};\n`;
  return files;
}

async function runTask(scenario: Scenario, fileCount: number, limits: { maxDepth: number } = { maxDepth: 2 }) {
  server = await startMessagesServer({ policy: scenarioPolicy(scenario) });
  const workspace = await LocalWorkspace.open(await createTestRepo(repoFiles(fileCount)));
  const model = anthropic({ model: MODEL, apiKey: "test", baseURL: server.url, retry: { maxRetries: 0 } });
  const run = startTask({ vision: "Add a greeting module", workspace, model, limits, maxConcurrency: 1 });
  const result = await run.result;
  expect(result.error).toBeUndefined();
  expect(result.status).toBe("success");
  const requests = messageRequests();
  expect(requests.every((r) => r.status === 200)).toBe(true);
  return requests;
}

/** root plans A and B; A plans A-A; everyone reads, writes and completes. */
const threeLevels: Scenario = {
  root: {
    finish_explore: [reply.toolUse("list_files", {}), explore("PLAN")],
    submit_plan: [plan([{ title: "Greeting" }, { title: "Farewell" }])],
    complete_task: [reply.toolUse("read_file", { path: "greeting.ts" }), done("All merged.")],
  },
  A: {
    finish_explore: [reply.toolUse("read_file", { path: "README.md" }), explore("PLAN")],
    submit_plan: [plan([{ title: "Greeting text" }])],
    complete_task: [write("greeting.ts", "export const greeting = 'hi';\n"), done()],
  },
  "A-A": {
    finish_explore: [reply.toolUse("read_file", { path: "README.md" }), explore("COMPLETE")],
    complete_task: [write("greeting-text.ts", "export const text = 'hi';\n"), reply.toolUse("run_command", { command: "ls" }), done()],
  },
  B: {
    finish_explore: [explore("COMPLETE")],
    complete_task: [write("farewell.ts", "export const farewell = 'bye';\n"), done()],
  },
};

describe("prompt-cache layout of a run", () => {
  it("sends one tool list, one system prompt with the overview, and each agent's own text only after the shared prefix", async () => {
    const requests = await runTask(threeLevels, 20);
    const agents = new Set(requests.map((r) => requestPosition(r.body).agent));
    const phases = new Set(requests.map((r) => requestPosition(r.body).phase));
    expect(agents).toEqual(new Set(["root", "A", "A-A", "B"]));
    expect(phases).toEqual(new Set(["EXPLORE", "PLAN", "COMPLETE"]));

    // The same tools, in the same order, in every phase of every agent.
    expect(new Set(requests.map((r) => JSON.stringify(r.body.tools))).size).toBe(1);
    expect(requests[0]!.body.tools.map((t: { name: string }) => t.name)).toEqual([
      "read_file", "list_files", "search_files", "write_file", "edit_file", "run_command",
      "finish_explore", "submit_plan", "complete_task", "complete_merge",
    ]);
    // One system prompt for every agent, holding the repository overview, and one breakpoint at its end.
    expect(new Set(requests.map((r) => JSON.stringify(r.body.system))).size).toBe(1);
    const system = requests[0]!.body.system as Array<{ text: string; cache_control?: unknown }>;
    expect(system).toHaveLength(1);
    expect(system[0]!.cache_control).toEqual({ type: "ephemeral" });
    expect(system[0]!.text).toContain(OVERVIEW_HEADING);
    expect(system[0]!.text).toContain("src/module-000/index.ts");
    for (const request of requests) {
      // Nothing before the system breakpoint names an agent, a phase, a branch or a subtask.
      const shared = JSON.stringify([request.body.tools, request.body.system]);
      expect(shared).not.toMatch(AGENT_TAG_PATTERN);
      expect(shared).not.toMatch(/keen agent=|agents\/summon|Greeting|Farewell/);
      // No breakpoint among the tools: the one at the end of the system prompt covers them.
      expect(request.body.tools.some((t: { cache_control?: unknown }) => t.cache_control)).toBe(false);
      // The tag line and the agent's task live in its own messages: after the shared prefix.
      const first = JSON.stringify(request.body.messages[0]);
      expect(first).toMatch(/\[keen agent=[A-Za-z-]+ phase=EXPLORE\]/);
      expect(first).not.toContain(OVERVIEW_HEADING);
    }

    // An out-of-phase call is refused with a clear tool error and changes nothing.
    await server!.close();
    server = await startMessagesServer({
      policy: scenarioPolicy({ root: { finish_explore: [write("early.txt", "too soon\n"), explore("COMPLETE")], complete_task: [done()] } }),
    });
    const workspace = await LocalWorkspace.open(await createTestRepo(repoFiles(3)));
    const model = anthropic({ model: MODEL, apiKey: "test", baseURL: server.url, retry: { maxRetries: 0 } });
    const result = await startTask({ vision: "Look first", workspace, model }).result;
    expect(result.status).toBe("success");
    const refusal = messageRequests()[1]!.body.messages.at(-1).content[0];
    expect(refusal).toMatchObject({ type: "tool_result", is_error: true });
    expect(refusal.content).toMatch(/^write_file cannot be used at this point\. Tools you can use now: read_file, list_files, search_files, .*finish_explore$/);
    expect(refusal.content.split("now: ")[1].split(", ")).not.toContain("write_file");
    await expect(workspace.readFile("early.txt")).rejects.toThrow();
  });

  it("reads ≥ 0.95 of the input of a 4-turn single-agent task from the cache", async () => {
    const script: ScriptedReply[] = [
      reply.toolUse("list_files", {}),
      reply.toolUse("write_file", { path: "greeting.ts", content: "export const greeting = 'hi';\n" }),
      reply.toolUse("run_command", { command: "cat greeting.ts" }),
      reply.text("Added greeting.ts and checked it."),
    ];
    server = await startMessagesServer({ script });
    const workspace = await LocalWorkspace.open(await createTestRepo(repoFiles(5)));
    const model = anthropic({ model: MODEL, apiKey: "test", baseURL: server.url, retry: { maxRetries: 0 } });
    const result = await startRun({ vision: "Add a greeting module", workspace, model, tools: builtinTools() }).result;
    expect(result.status).toBe("success");
    const requests = messageRequests();
    expect(requests).toHaveLength(4);
    const share = cachedShare(requests);
    console.log(`cached share of requests 2..4 of a single-agent task: ${(share * 100).toFixed(1)}%`);
    expect(share).toBeGreaterThanOrEqual(0.95);
  });

  it("reads ≥ 0.9 of the input of a 3-level tree from the cache, and every child's first request ≥ 0.8", async () => {
    const requests = await runTask(threeLevels, 20);
    expect(new Set(requests.map((r) => requestPosition(r.body).agent)).size).toBe(4);
    const share = cachedShare(requests);
    console.log(`cached share of requests 2..${requests.length} of a 3-level tree: ${(share * 100).toFixed(1)}%`);
    expect(share).toBeGreaterThanOrEqual(0.9);
    for (const agent of ["A", "A-A", "B"]) {
      const first = requests.find((r) => requestPosition(r.body).agent === agent)!;
      expect(first.usage!.cache_read_input_tokens / inputOf(first), agent).toBeGreaterThanOrEqual(0.8);
    }
    // Within a step, each request reads all the previous one sent.
    for (const [i, request] of requests.entries()) {
      const position = requestPosition(request.body);
      const previous = requests.slice(0, i).reverse().find((r) => requestPosition(r.body).agent === position.agent);
      if (previous && requestPosition(previous.body).phase === position.phase) {
        expect(request.usage!.cache_read_input_tokens, `request ${i}`).toBeGreaterThanOrEqual(inputOf(previous));
      }
    }
  });

  it("gives every child's first request ≥ 0.8 from the cache on a 500-file repository", async () => {
    const scenario: Scenario = {
      root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One" }, { title: "Two" }, { title: "Three" }])] },
      A: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "One, first half" }, { title: "One, second half" }])] },
      "A-A": { complete_task: [write("one-a.ts", "1\n"), done()] },
      "A-B": { complete_task: [write("one-b.ts", "1\n"), done()] },
      B: { complete_task: [write("two.ts", "2\n"), done()] },
      C: { complete_task: [write("three.ts", "3\n"), done()] },
    };
    const requests = await runTask(scenario, 500);
    const firsts = new Map<string, RecordedRequest>();
    for (const request of requests) {
      const { agent } = requestPosition(request.body);
      if (!firsts.has(agent)) firsts.set(agent, request);
    }
    firsts.delete("root");
    expect([...firsts.keys()].sort()).toEqual(["A", "A-A", "A-B", "B", "C"]);
    for (const [agent, request] of firsts) {
      const share = request.usage!.cache_read_input_tokens / inputOf(request);
      console.log(`first request of ${agent} on a 500-file repository: ${(share * 100).toFixed(1)}% from the cache`);
      expect(share, agent).toBeGreaterThanOrEqual(0.8);
      // What it missed is its own first message, nothing of the shared prefix.
      const blocks = flattenRequest(request.body);
      const prefix = blocks.slice(0, request.body.tools.length + request.body.system.length).reduce((n, b) => n + b.tokens, 0);
      expect(request.usage!.cache_read_input_tokens).toBe(prefix);
    }
  });
});
