// The reference for bench/run-e2e.ts: a bare `@anthropic-ai/sdk` streaming agent loop with the
// same four tools a scripted task needs (list files, write a file, run a command, finish), the
// system prompt and the latest turn marked for prompt caching. Plain JavaScript run by plain
// Node, as an application built directly on the SDK would be.
//
//   ANTHROPIC_BASE_URL=… ANTHROPIC_API_KEY=… node bench/support/bare-loop.mjs <repo> "<task>"
import { execFile } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import Anthropic from "@anthropic-ai/sdk";

const run = promisify(execFile);
const [repo, task] = process.argv.slice(2);
const client = new Anthropic();

const tools = [
  { name: "list_files", description: "List the files of the repository.", input_schema: { type: "object", properties: {} } },
  {
    name: "write_file",
    description: "Write a file.",
    input_schema: { type: "object", properties: { path: { type: "string" }, content: { type: "string" } }, required: ["path", "content"] },
  },
  { name: "run_command", description: "Run a shell command.", input_schema: { type: "object", properties: { command: { type: "string" } }, required: ["command"] } },
  { name: "finish", description: "Finish the task.", input_schema: { type: "object", properties: { summary: { type: "string" } }, required: ["summary"] } },
];

async function execute(name, input) {
  if (name === "list_files") return (await run("git", ["ls-files"], { cwd: repo, maxBuffer: 64 << 20 })).stdout;
  if (name === "write_file") {
    await mkdir(dirname(join(repo, input.path)), { recursive: true });
    await writeFile(join(repo, input.path), input.content);
    return `Wrote ${input.path}`;
  }
  if (name === "run_command") {
    const { stdout, stderr } = await run("/bin/sh", ["-c", input.command], { cwd: repo });
    return `${stdout}${stderr}`;
  }
  return "ok";
}

const system = [{ type: "text", text: "You are a coding agent working in a git repository. Use the tools, then call finish.", cache_control: { type: "ephemeral" } }];
const messages = [{ role: "user", content: [{ type: "text", text: task }] }];
/** One breakpoint on the newest block, none on older turns (the API allows four in all). */
const withBreakpoint = () =>
  messages.map((message, i) =>
    i === messages.length - 1
      ? { ...message, content: message.content.map((block, j) => (j === message.content.length - 1 ? { ...block, cache_control: { type: "ephemeral" } } : block)) }
      : message,
  );

for (let turn = 0; turn < 20; turn++) {
  const response = await client.messages.stream({ model: "claude-sonnet-5-5", max_tokens: 4096, system, tools, messages: withBreakpoint() }).finalMessage();
  messages.push({ role: "assistant", content: response.content });
  const uses = response.content.filter((block) => block.type === "tool_use");
  if (uses.length === 0 || uses.some((use) => use.name === "finish")) break;
  const results = [];
  for (const use of uses) results.push({ type: "tool_result", tool_use_id: use.id, content: await execute(use.name, use.input) });
  messages.push({ role: "user", content: results });
}
