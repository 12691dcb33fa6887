import { afterEach, describe, expect, it } from "vitest";
import type { KeenEvent, KeenEventOf } from "../events.js";
import { anthropic } from "../model/anthropic.js";
import type { ToolResultBlock, ToolUseBlock } from "../model/model.js";
import { flattenRequest } from "../testing/prompt-cache.js";
import { reply, startMessagesServer, type MessagesServer, type RecordedRequest, type ReplyPolicy } from "../testing/index.js";
import { builtinTools } from "../tools/index.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo } from "../workspace/test-repo.js";
import { capToolResults } from "./conversation.js";
import { startRun, type RunOptions } from "./start-run.js";

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const ofType = <T extends KeenEvent["type"]>(events: KeenEvent[], type: T) => events.filter((e): e is KeenEventOf<T> => e.type === type);
const inputOf = (r: RecordedRequest) => r.usage!.input_tokens + r.usage!.cache_creation_input_tokens + r.usage!.cache_read_input_tokens;

/** A text file of about `bytes` bytes, in numbered 80-character lines. */
function bigText(bytes: number, tag: string): string {
  const lines: string[] = [];
  for (let n = 1; lines.length * 80 < bytes; n++) lines.push(`${tag} line ${String(n).padStart(6, "0")} ${"x".repeat(80 - tag.length - 18)}`);
  return `${lines.join("\n")}\n`;
}

async function runWith(policy: ReplyPolicy, files: Record<string, string>, options: Partial<RunOptions> & { contextWindow?: number } = {}) {
  server = await startMessagesServer({ policy });
  const workspace = await LocalWorkspace.open(await createTestRepo({ "README.md": "# app\n", ...files }));
  const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { maxRetries: 0 } });
  const run = startRun({ vision: "Read the files", workspace, model, tools: builtinTools(), commit: false, ...options });
  const events: KeenEvent[] = [];
  for await (const event of run) events.push(event);
  const messages = server.requests.filter((r) => r.path === "/v1/messages");
  return { result: await run.result, events, messages };
}

describe("one turn's tool output against the context window", () => {
  it("five parallel read_file calls on 200 KB files at a 200k window: the next request fits, each cut result says how to read on", async () => {
    const files = Object.fromEntries(Array.from({ length: 5 }, (_, i) => [`big/f${i}.txt`, bigText(200 * 1024, `f${i}`)]));
    const policy: ReplyPolicy = (_request, { index }) =>
      index === 0 ? reply.toolUses(...Object.keys(files).map((path) => ["read_file", { path }] as [string, unknown])) : reply.text("Read them.");
    const { result, messages } = await runWith(policy, files);
    expect(result.status).toBe("success");
    expect(messages).toHaveLength(2);
    const second = messages[1]!;
    expect(second.status).toBe(200);
    // Without the cap this request held about 250k tokens.
    const threshold = Math.min(0.8 * 200_000, 200_000 - 8192);
    expect(inputOf(second)).toBeLessThan(threshold);
    expect(inputOf(second) + second.body.max_tokens).toBeLessThanOrEqual(200_000);
    const results = second.body.messages[2].content as ToolResultBlock[];
    expect(results).toHaveLength(5);
    for (const [i, block] of results.entries()) {
      const text = block.content as string;
      const note = text.match(/\[Output cut to fit the context window: this shows the first (\d+) of (\d+) characters\. Read on with read_file \{ path: "big\/f(\d)\.txt", offset: (\d+) \} and a limit of lines\.\]$/);
      expect(note, text.slice(-300)).not.toBeNull();
      expect(Number(note![3])).toBe(i);
      // The last line shown is the one before the offset, and it is shown whole.
      const offset = Number(note![4]);
      const shown = text.slice(0, text.lastIndexOf("[Output cut"));
      expect(shown).toMatch(new RegExp(`^\\s*${offset - 1}\\tf${i} line ${String(offset - 1).padStart(6, "0")} x+\\n$`, "m"));
      expect(shown).not.toContain(`f${i} line ${String(offset).padStart(6, "0")}`);
    }
  });

  it("with a 20k window and 8k-token reads, pruning gets under the threshold every time, leaves room for the answer, and stays cached", async () => {
    const reads = 24;
    const files = Object.fromEntries(Array.from({ length: reads }, (_, i) => [`src/part${i}.txt`, bigText(32 * 1024, `p${i}`)]));
    const policy: ReplyPolicy = (_request, { index }) => (index < reads ? reply.toolUse("read_file", { path: `src/part${index}.txt` }) : reply.text("Read every part."));
    const contextWindow = 20_000;
    const maxTokens = 4096;
    const { result, events, messages } = await runWith(policy, files, { contextWindow, maxTokens, maxTurns: reads + 2 });
    expect(result.status).toBe("success");
    expect(messages.filter((r) => r.status !== 200)).toEqual([]);
    expect(messages).toHaveLength(reads + 1);
    const threshold = Math.min(0.8 * contextWindow, contextWindow - maxTokens);
    for (const request of messages) {
      expect(inputOf(request)).toBeLessThan(threshold);
      expect(inputOf(request) + request.body.max_tokens).toBeLessThanOrEqual(contextWindow);
    }
    const pruned = ofType(events, "context.pruned");
    expect(pruned.length).toBeGreaterThan(0);
    // Pruning makes room for more than the next turn.
    expect(pruned.length).toBeLessThanOrEqual(reads / 2);
    const later = messages.slice(1);
    const cachedShare = later.reduce((n, r) => n + r.usage!.cache_read_input_tokens, 0) / later.reduce((n, r) => n + inputOf(r), 0);
    expect(cachedShare).toBeGreaterThanOrEqual(0.6);
    // Right after each pruning, the request reads from the cache everything before the earliest
    // block the pruning changed.
    const prunedRequests = server!.requests.flatMap((r, i) => (r.path === "/v1/messages/count_tokens" ? [server!.requests[i + 1]!] : []));
    expect(prunedRequests).toHaveLength(pruned.length);
    for (const request of prunedRequests) {
      const previous = messages[messages.indexOf(request) - 1]!;
      const [now, then] = [flattenRequest(request.body), flattenRequest(previous.body)];
      let unchanged = 0;
      while (unchanged < now.length && now[unchanged]!.prefixHash === then[unchanged]?.prefixHash) unchanged++;
      expect(unchanged).toBeGreaterThan(request.body.tools.length + 1);
      const unchangedTokens = now.slice(0, unchanged).reduce((n, b) => n + b.tokens, 0);
      expect(request.usage!.cache_read_input_tokens).toBe(unchangedTokens);
    }
  });
});

describe("capToolResults", () => {
  const call = (id: string, name: string, input: unknown): ToolUseBlock => ({ type: "tool_use", id, name, input });
  const result = (id: string, content: string): ToolResultBlock => ({ type: "tool_result", tool_use_id: id, content });

  it("leaves results that fit alone, and cuts the largest to a common size, small ones whole", () => {
    const calls = [call("a", "run_command", { command: "make" }), call("b", "search_files", { pattern: "x" }), call("c", "list_files", {})];
    const results = [result("a", "a".repeat(40_000)), result("b", "b".repeat(400)), result("c", "c".repeat(20_000))];
    expect(capToolResults(results, calls, 20_000)).toBe(results);
    const cut = capToolResults(results, calls, 5_100);
    const texts = cut.map((r) => r.content as string);
    expect(texts[1]).toBe("b".repeat(400));
    expect(texts[0]).toMatch(/^a+\n\[Output cut to fit the context window: this shows the first \d+ of 40000 characters\. Narrow the output \(grep, head, tail\), or redirect it to a file and read that in parts\.\]$/);
    expect(texts[2]).toMatch(/of 20000 characters\. Narrow the pattern or the path to see the rest\.\]$/);
    // The two cut results got the same share, and everything together fits the budget.
    expect(Math.abs(texts[0]!.length - texts[2]!.length)).toBeLessThan(40);
    expect(texts.reduce((n, t) => n + Math.ceil(t.length / 4), 0)).toBeLessThanOrEqual(5_100);
    expect(cut.map((r) => r.tool_use_id)).toEqual(["a", "b", "c"]);
  });
});
