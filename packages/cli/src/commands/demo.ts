import { randomUUID } from "node:crypto";
import { mkdir, mkdtemp, readdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { execa } from "execa";
import { anthropic, startTask } from "@keen/agent-core";
import { startMessagesServer } from "@keen/agent-core/testing";
import { parseCommandArgs } from "../args.js";
import { UsageError, type CommandIo } from "../cli-error.js";
import { DEMO_TREE, DEMO_VALIDATION, DEMO_VISION, SAMPLE_FILES } from "../demo/sample-tree.js";
import { scriptedTreePolicy } from "../demo/scripted-tree.js";
import { defaultSnapshotPath, SnapshotFile } from "../snapshot-file.js";
import { outputMode, quote, runTaskSession } from "../task-session.js";
import { emptyTree } from "../tree/tree-state.js";
import { openRepo } from "./run.js";

export const DEMO_HELP = `Usage: keen demo [--dir DIR] [--pace MS] [--json]

Runs the full keen lifecycle offline. It creates a small sample repository, starts the
bundled Messages API server with a scripted model, and lets a tree of agents work on it:
the root plans two children, one child plans a grandchild, both children edit the README
so one merge conflicts and the root resolves it, and "${DEMO_VALIDATION}" validates every merge.

Options:
  --dir DIR   where to create the sample repository (default: a new temporary folder)
  --pace MS   how long the scripted model waits before each reply (default 150 on a terminal, else 0)
  --json      print every event as one JSON line on stdout
  -h, --help  show this help`;

export async function demoCommand(argv: string[], io: CommandIo): Promise<number> {
  const { values } = parseCommandArgs(
    argv,
    { dir: { type: "string" }, pace: { type: "string" }, json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
    "demo",
    false,
  );
  if (values.help) {
    io.stdout(`${DEMO_HELP}\n`);
    return 0;
  }
  const mode = outputMode(io, Boolean(values.json));
  let pace = mode === "live" ? 150 : 0;
  if (values.pace !== undefined) {
    pace = /^\d+$/.test(values.pace) ? Number(values.pace) : Number.NaN;
    if (!Number.isSafeInteger(pace) || pace > 60_000) throw new UsageError(`--pace must be a number of milliseconds up to 60000, got "${values.pace}"`);
  }
  const dir = resolve(values.dir ?? (await mkdtemp(join(tmpdir(), "keen-demo-"))));
  await createSampleRepo(dir);

  const server = await startMessagesServer({ policy: scriptedTreePolicy(DEMO_TREE, { delayMs: pace }) });
  try {
    const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "offline-demo", baseURL: server.url });
    // The scripted model only edits files, so the demo runs without bubblewrap on any machine.
    const workspace = await openRepo(dir, false);
    const runId = `run_${randomUUID()}`;
    const snapshot = new SnapshotFile(await defaultSnapshotPath(dir, runId));
    const intro = `keen demo: a scripted model on a sample repository at ${dir} (offline; commands run without the sandbox because the script only edits files)\n`;
    if (mode === "json") io.stderr(intro);
    else io.stdout(intro);
    const session = await runTaskSession({
      io,
      mode,
      snapshot,
      repo: dir,
      tree: emptyTree(),
      // A demo cannot be resumed: its scripted server goes away with this process.
      interruptedMessage: `the sample repository is at ${dir}`,
      launch: () =>
        startTask({
          vision: DEMO_VISION,
          workspace,
          model,
          runId,
          validation: { command: DEMO_VALIDATION },
          onConflict: "resolve",
          maxConcurrency: 2,
          commitAuthor: DEMO_AUTHOR,
          // The sample repository is keen's own, made a moment ago: the demo works in it directly
          // (a user's repository always gets a run branch), so its tests run on the result.
          branch: false,
          onSnapshot: (s) => snapshot.write(s),
        }),
    });
    if (mode !== "json" && !session.interrupted) {
      io.stdout(`\nThe sample repository is at ${dir}\n`);
      io.stdout(`Run its tests: (cd ${quote(dir)} && node --test)\n`);
    }
    return session.exitCode;
  } finally {
    await server.close();
  }
}

const DEMO_AUTHOR = { name: "keen demo", email: "demo@keen.localhost" };

async function createSampleRepo(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const existing = await execa("git", ["rev-parse", "--is-inside-work-tree"], { cwd: dir, reject: false });
  if (existing.exitCode === 0) throw new UsageError(`${dir} is already inside a git repository; pick an empty folder for the demo`);
  if ((await readdir(dir)).length > 0) throw new UsageError(`${dir} is not empty; pick an empty folder for the demo`);
  const git = (...args: string[]) => execa("git", args, { cwd: dir });
  await git("init", "--quiet", "--initial-branch=main");
  await git("config", "user.name", DEMO_AUTHOR.name);
  await git("config", "user.email", DEMO_AUTHOR.email);
  for (const [path, content] of Object.entries(SAMPLE_FILES)) {
    await mkdir(dirname(join(dir, path)), { recursive: true });
    await writeFile(join(dir, path), content);
  }
  await git("add", "-A");
  await git("commit", "--quiet", "-m", "Sample project");
}
