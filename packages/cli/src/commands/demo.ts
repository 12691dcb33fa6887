import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { execa } from "execa";
import { anthropic, builtinTools, LocalWorkspace, startRun } from "@keen/agent-core";
import { reply, startMessagesServer } from "@keen/agent-core/testing";
import { UsageError, type Io } from "../cli-error.js";
import { describeEvent } from "../render.js";

export const DEMO_HELP = `Usage: keen demo [--dir DIR] [--json]

Runs keen offline: creates a small sample repository, starts the bundled Messages API
server with a scripted model, and lets a real agent explore, edit, test and commit.

Options:
  --dir DIR   where to create the sample repository (default: a new temporary folder)
  --json      print every event as one JSON line on stdout
  -h, --help  show this help`;

/** The sample project: a greeting module without the tests its README asks for. */
const SAMPLE_FILES: Record<string, string> = {
  "README.md": "# greeter\n\nA tiny module that greets people. It needs a test (run with `node --test`).\n",
  "package.json": `${JSON.stringify({ name: "greeter", version: "1.0.0", type: "module", scripts: { test: "node --test" } }, null, 2)}\n`,
  "src/greet.js": 'export function greet(name) {\n  return `Hello, ${name}!`;\n}\n',
  ".gitignore": "node_modules/\n",
};

const TEST_FILE = `import assert from "node:assert/strict";
import { test } from "node:test";
import { greet } from "../src/greet.js";

test("greets by name", () => {
  assert.equal(greet("Ada"), "Hello, Ada!");
});
`;

/** The scripted model's turns: look around, read, write a test, run it, summarise. */
function demoScript() {
  return [
    reply.toolUse("list_files", {}),
    reply.toolUse("read_file", { path: "src/greet.js" }),
    reply.toolUse("write_file", { path: "test/greet.test.js", content: TEST_FILE }),
    reply.toolUse("run_command", { command: "node --test" }),
    reply.text("Added test/greet.test.js covering greet(); `node --test` passes."),
  ];
}

export async function demoCommand(argv: string[], io: Io): Promise<number> {
  let values: { dir?: string; json?: boolean; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: { dir: { type: "string" }, json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
    }));
  } catch (error) {
    throw new UsageError(`${(error as Error).message.split("\n")[0]} (see keen demo --help)`);
  }
  if (values.help) {
    io.stdout(`${DEMO_HELP}\n`);
    return 0;
  }
  const dir = values.dir ?? (await mkdtemp(join(tmpdir(), "keen-demo-")));
  await createSampleRepo(dir);

  const server = await startMessagesServer({ script: demoScript() });
  try {
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "offline-demo", baseURL: server.url });
    const run = startRun({
      vision: "Add a test for greet() and make sure the test suite passes.",
      workspace: await LocalWorkspace.open(dir),
      model,
      tools: builtinTools(),
    });
    for await (const event of run) {
      if (values.json) io.stdout(`${JSON.stringify(event)}\n`);
      else {
        const line = describeEvent(event);
        if (line) io.stdout(`${line}\n`);
      }
    }
    const result = await run.result;
    if (!values.json) {
      io.stdout(`\nThe sample repository is at ${dir}\n`);
      io.stdout(`See what the agent did:  git -C ${dir} log --stat -1\n`);
    }
    return result.status === "success" ? 0 : 1;
  } finally {
    await server.close();
  }
}

async function createSampleRepo(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const git = (...args: string[]) => execa("git", args, { cwd: dir, env: SAMPLE_IDENTITY });
  const existing = await execa("git", ["rev-parse", "--is-inside-work-tree"], { cwd: dir, reject: false });
  if (existing.exitCode === 0) throw new UsageError(`${dir} is already a git repository; pick an empty folder for the demo`);
  await git("init", "--quiet", "--initial-branch=main");
  for (const [path, content] of Object.entries(SAMPLE_FILES)) {
    await mkdir(dirname(join(dir, path)), { recursive: true });
    await writeFile(join(dir, path), content);
  }
  await git("add", "-A");
  await git("commit", "--quiet", "-m", "Sample project");
}

const SAMPLE_IDENTITY = {
  GIT_AUTHOR_NAME: "keen demo",
  GIT_AUTHOR_EMAIL: "demo@keen.localhost",
  GIT_COMMITTER_NAME: "keen demo",
  GIT_COMMITTER_EMAIL: "demo@keen.localhost",
};
