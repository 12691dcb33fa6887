import { randomUUID } from "node:crypto";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import {
  anthropic,
  isKeenError,
  LocalWorkspace,
  resumeTask,
  startTask,
  type Model,
  type SandboxOptions,
  type TaskLimits,
  type TaskSnapshot,
} from "@keen/agent-core";
import { UsageError, type Io } from "../cli-error.js";
import { defaultSnapshotPath, readSnapshotFile, repoOfSnapshotPath, SnapshotFile } from "../snapshot-file.js";
import { oneLine, outputMode, quote, runTaskSession } from "../task-session.js";
import { emptyTree, treeFromSnapshot } from "../tree/tree-state.js";

export const RUN_HELP = `Usage: keen run "<vision>" [options]
       keen run --resume FILE [--repo DIR]

Runs the full lifecycle on a git repository: the root agent explores, plans, hands subtasks
to child agents on their own branches (summon-A, summon-A-B, …), merges their work back with
validation, and commits. On a terminal the agent tree is shown live.

Options:
  --repo DIR             the git repository to work in (default: current directory)
  --model ID             Claude model id (default: claude-sonnet-5-5, or KEEN_MODEL)
  --max-depth N          deepest level of child agents; 0 means no children (default 2)
  --max-children N       most children per agent (default 4)
  --max-agents N         most agents in the whole tree, root included (default 10)
  --max-turns N          most model turns per phase per agent (default 30)
  --token-budget N       stop every agent once the run has used N tokens
  --concurrency N        children of one agent that run at the same time (default 2)
  --validate CMD         command run after every merge and before an agent completes
  --on-conflict POLICY   resolve (the parent model fixes it) or rollback (default resolve)
  --sandbox              run commands under bubblewrap: no network, only the worktree writable (default)
  --no-sandbox           run commands without the sandbox
  --sandbox-read PATH    also show PATH read-only inside the sandbox (repeatable; by default it shows
                         only system tool folders and the worktree, no home folders)
  --snapshot FILE        where to keep the run's snapshot (default <repo>/.git/keen/runs/<run id>.json)
  --resume FILE          continue the run saved in FILE
  --json                 print every event as one JSON line on stdout, and nothing else
  -h, --help             show this help

Exit codes: 0 success, 1 the task failed, 2 bad usage, 130 interrupted (resumable).
Environment: ANTHROPIC_API_KEY (required), ANTHROPIC_BASE_URL, KEEN_MODEL, KEEN_FORCE_TTY=1|0.`;

export const DEFAULT_MODEL = "claude-sonnet-5-5";

/** Flags that shape a run; a resumed run keeps the values in its snapshot. */
const RUN_SHAPE_FLAGS = ["max-depth", "max-children", "max-agents", "max-turns", "token-budget", "concurrency", "validate", "on-conflict"] as const;

export interface RunCommandOptions {
  /** Use this model instead of building one from flags and the environment. */
  model?: Model;
}

export async function runCommand(argv: string[], io: Io, options: RunCommandOptions = {}): Promise<number> {
  const { values, positionals } = parseFlags(argv);
  if (values.help) {
    io.stdout(`${RUN_HELP}\n`);
    return 0;
  }
  if (values.sandbox && values["no-sandbox"]) throw new UsageError("--sandbox and --no-sandbox contradict each other");
  const sandbox = !values["no-sandbox"];
  const readPaths = values["sandbox-read"] ?? [];
  if (!sandbox && readPaths.length) throw new UsageError("--sandbox-read widens the sandbox; it means nothing with --no-sandbox");
  const sandboxSetting: boolean | SandboxOptions = sandbox && readPaths.length ? { extraReadOnlyPaths: readPaths.map((path) => resolve(path)) } : sandbox;
  const vision = positionals.join(" ").trim();
  const settings = readSettings(values);

  if (values.resume !== undefined) {
    if (vision) throw new UsageError("--resume continues a saved run; give no vision with it");
    const fixed = RUN_SHAPE_FLAGS.filter((flag) => values[flag] !== undefined);
    if (fixed.length) throw new UsageError(`--${fixed[0]} is fixed by the snapshot and cannot change on --resume`);
    const snapshotPath = resolve(values.resume);
    const saved = await readSnapshotFile(snapshotPath);
    const repo = resolve(values.repo ?? repoOfSnapshotPath(snapshotPath) ?? process.cwd());
    const model = options.model ?? buildModel(values.model ?? io.env.KEEN_MODEL ?? DEFAULT_MODEL, io.env);
    const workspace = await openRepo(repo, sandboxSetting);
    await checkResumable(saved, workspace, repo);
    const snapshot = new SnapshotFile(values.snapshot ? resolve(values.snapshot) : snapshotPath);
    const mode = outputMode(io, Boolean(values.json));
    announce(io, mode, `resuming ${saved.runId} from ${snapshotPath}`, snapshot.path, sandbox);
    const session = await runTaskSession({
      io,
      mode,
      snapshot,
      repo,
      tree: treeFromSnapshot(saved),
      launch: () => resumeTask(saved, { workspace, model, onSnapshot: (s) => snapshot.write(s) }),
    });
    return session.exitCode;
  }

  if (!vision) throw new UsageError('missing the vision: keen run "<what to do>" --repo DIR');
  const model = options.model ?? buildModel(values.model ?? io.env.KEEN_MODEL ?? DEFAULT_MODEL, io.env);
  const repo = resolve(values.repo ?? process.cwd());
  const workspace = await openRepo(repo, sandboxSetting);
  const runId = `run_${randomUUID()}`;
  const snapshot = new SnapshotFile(values.snapshot ? resolve(values.snapshot) : await defaultSnapshotPath(workspace.root, runId));
  const mode = outputMode(io, Boolean(values.json));
  // Configuration errors surface before anything is printed or written.
  const launch = () =>
    startTask({
      vision,
      workspace,
      model,
      runId,
      limits: settings.limits,
      ...(settings.concurrency !== undefined ? { maxConcurrency: settings.concurrency } : {}),
      ...(settings.onConflict ? { onConflict: settings.onConflict } : {}),
      ...(settings.validate ? { validation: { command: settings.validate } } : {}),
      onSnapshot: (s) => snapshot.write(s),
    });
  announce(io, mode, `run ${runId}`, snapshot.path, sandbox);
  const session = await runTaskSession({ io, mode, snapshot, repo: workspace.root, tree: emptyTree(), launch });
  return session.exitCode;
}

/** Says where the snapshot is and how to resume, before the run starts. */
function announce(io: Io, mode: "json" | "live" | "lines", what: string, snapshotPath: string, sandbox: boolean): void {
  const text = `keen: ${what} · snapshot ${snapshotPath} (resume: keen run --resume ${quote(snapshotPath)})${sandbox ? "" : " · sandbox off"}\n`;
  if (mode === "json") io.stderr(text);
  else io.stdout(text);
}

type Flags = ReturnType<typeof parseFlags>["values"];

interface Settings {
  limits: Partial<TaskLimits>;
  concurrency?: number;
  onConflict?: "resolve" | "rollback";
  validate?: string;
}

function readSettings(values: Flags): Settings {
  const limits: Partial<TaskLimits> = {};
  const maxDepth = integerFlag(values, "max-depth", 0);
  if (maxDepth !== undefined) limits.maxDepth = maxDepth;
  const maxChildren = integerFlag(values, "max-children", 1);
  if (maxChildren !== undefined) limits.maxChildren = maxChildren;
  const maxAgents = integerFlag(values, "max-agents", 1);
  if (maxAgents !== undefined) limits.maxAgents = maxAgents;
  const maxTurns = integerFlag(values, "max-turns", 1);
  if (maxTurns !== undefined) limits.maxTurnsPerPhase = maxTurns;
  const tokenBudget = integerFlag(values, "token-budget", 1);
  if (tokenBudget !== undefined) limits.tokenBudget = tokenBudget;
  const concurrency = integerFlag(values, "concurrency", 1);
  const onConflict = values["on-conflict"];
  if (onConflict !== undefined && onConflict !== "resolve" && onConflict !== "rollback") {
    throw new UsageError(`--on-conflict must be resolve or rollback, got "${onConflict}"`);
  }
  const validate = values.validate;
  if (validate !== undefined && !validate.trim()) throw new UsageError("--validate needs a command, got an empty string");
  return {
    limits,
    ...(concurrency !== undefined ? { concurrency } : {}),
    ...(onConflict ? { onConflict } : {}),
    ...(validate ? { validate } : {}),
  };
}

function integerFlag(values: Flags, name: (typeof RUN_SHAPE_FLAGS)[number], min: 0 | 1): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const value = /^\d+$/.test(raw.trim()) ? Number(raw) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min) {
    throw new UsageError(`--${name} must be a ${min === 0 ? "non-negative" : "positive"} integer, got "${raw}"`);
  }
  return value;
}

function parseFlags(argv: string[]) {
  try {
    return parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        repo: { type: "string" },
        model: { type: "string" },
        "max-depth": { type: "string" },
        "max-children": { type: "string" },
        "max-agents": { type: "string" },
        "max-turns": { type: "string" },
        "token-budget": { type: "string" },
        concurrency: { type: "string" },
        validate: { type: "string" },
        "on-conflict": { type: "string" },
        sandbox: { type: "boolean" },
        "no-sandbox": { type: "boolean" },
        "sandbox-read": { type: "string", multiple: true },
        snapshot: { type: "string" },
        resume: { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    throw new UsageError(`${(error as Error).message.split("\n")[0]} (see keen run --help)`);
  }
}

function buildModel(id: string, env: NodeJS.ProcessEnv): Model {
  const apiKey = env.ANTHROPIC_API_KEY;
  if (!apiKey) throw new UsageError("ANTHROPIC_API_KEY is not set (export it, or try the offline `keen demo`)");
  return anthropic({ model: id, apiKey, ...(env.ANTHROPIC_BASE_URL ? { baseURL: env.ANTHROPIC_BASE_URL } : {}) });
}

/**
 * Opens the repository. With `sandbox` on, the workspace runs commands under bubblewrap and
 * refuses to open where bubblewrap cannot run; that becomes a one-line usage error here.
 */
export async function openRepo(dir: string, sandbox: boolean | SandboxOptions): Promise<LocalWorkspace> {
  try {
    return await LocalWorkspace.open(dir, { sandbox });
  } catch (error) {
    if (isKeenError(error, "sandbox_unavailable")) {
      const reason = /sandboxed here: (.+?)\. Install/.exec(error.message)?.[1] ?? "bubblewrap cannot run";
      throw new UsageError(`cannot sandbox commands here (${oneLine(reason)}); install bubblewrap, or pass --no-sandbox to run them unsandboxed`);
    }
    if (isKeenError(error)) throw new UsageError(oneLine(error.message));
    throw error;
  }
}

/** A snapshot only continues in the repository it came from, on the branch it was working on. */
async function checkResumable(snapshot: TaskSnapshot, workspace: LocalWorkspace, repo: string): Promise<void> {
  const root = snapshot.agents.find((agent) => agent.parentId === null);
  if (!root) throw new UsageError(`the snapshot of ${snapshot.runId} has no root agent; nothing to resume`);
  if (root.phase === "DONE") {
    throw new UsageError(`${snapshot.runId} already finished (${root.status ?? "unknown status"}); nothing to resume`);
  }
  const branch = await workspace.currentBranch();
  if (branch !== root.branch) {
    throw new UsageError(`${repo} is on branch ${branch} but ${snapshot.runId} works on ${root.branch}; check it out (or pass --repo) first`);
  }
}
