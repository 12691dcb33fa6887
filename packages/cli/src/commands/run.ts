import { randomUUID } from "node:crypto";
import { access, lstat, mkdir, readFile } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import {
  anthropic,
  isKeenError,
  LocalWorkspace,
  NdjsonEventLog,
  resumeTask,
  runBranchName,
  startTask,
  type KeenEventOf,
  type Model,
  type SandboxOptions,
  type TaskLimits,
  type TaskSnapshot,
} from "@keen/agent-core";
import { applyRunBranch } from "../apply.js";
import { parseCommandArgs } from "../args.js";
import { UsageError, type CommandIo } from "../cli-error.js";
import { checkModelEndpoint } from "../model-check.js";
import { findRun, recordPathOf, RunRecord, writeRecord } from "../run-records.js";
import { defaultSnapshotPath, readSnapshotFile, repoOfSnapshotPath, SnapshotFile, snapshotPathIn } from "../snapshot-file.js";
import { oneLine, outputMode, quote, runTaskSession, type OutputMode, type TaskSessionResult } from "../task-session.js";
import { emptyTree, treeFromSnapshot } from "../tree/tree-state.js";
import { DEFAULT_MODEL, RUN_HELP, RUN_OPTIONS, RUN_SHAPE_FLAGS } from "./run-options.js";
import { loadExeca } from "../lazy-execa.js";

export { DEFAULT_MODEL, RUN_HELP } from "./run-options.js";

/** The longest vision read from standard input. */
const MAX_STDIN_VISION = 1_000_000;

export interface RunCommandOptions {
  /** Use this model instead of building one from flags and the environment (no endpoint check). */
  model?: Model;
}

export async function runCommand(argv: string[], io: CommandIo, options: RunCommandOptions = {}): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, RUN_OPTIONS, "run");
  if (values.help) {
    io.stdout(`${RUN_HELP}\n`);
    return 0;
  }
  if (values.sandbox && values["no-sandbox"]) throw new UsageError("--sandbox and --no-sandbox contradict each other");
  const readPaths = values["sandbox-read"] ?? [];
  if (values["no-sandbox"] && readPaths.length) throw new UsageError("--sandbox-read widens the sandbox; it means nothing with --no-sandbox");
  const sandbox: boolean | SandboxOptions = values["no-sandbox"] ? false : readPaths.length ? { extraReadOnlyPaths: readPaths.map((path) => resolve(path)) } : true;
  const settings = readSettings(values);
  const modelId = values.model ?? io.env.KEEN_MODEL ?? DEFAULT_MODEL;

  if (values.resume !== undefined || values.last) {
    if (values.resume !== undefined && values.last) throw new UsageError("--resume and --last both say which run to continue; give one");
    if (positionals.length) throw new UsageError("--resume continues a saved run; give no vision with it");
    const fixed = RUN_SHAPE_FLAGS.filter((flag) => values[flag] !== undefined);
    if (fixed.length) throw new UsageError(`--${fixed[0]} is fixed by the snapshot and cannot change on --resume`);
    const snapshotPath = await resumeTarget(values.resume, values.repo);
    const saved = await readSnapshotFile(snapshotPath);
    const repo = resolve(values.repo ?? repoOfSnapshotPath(snapshotPath) ?? process.cwd());
    const model = options.model ?? buildModel(modelId, io.env, settings.maxRetries);
    const workspace = await beforeEndpointCheck(options.model ? undefined : modelId, io.env, async () => {
      const opened = await openRepo(repo, sandbox);
      await checkResumable(saved, opened, repo);
      return opened;
    });
    const snapshot = new SnapshotFile(values.snapshot ? resolve(values.snapshot) : snapshotPath);
    const mode = outputMode(io, Boolean(values.json));
    // The record lives in the runs folder, under a name that cannot leave it whatever the snapshot says.
    const recordName = /^[\w-]+$/.test(saved.runId) ? saved.runId : basename(snapshotPath, ".json");
    const recordPath = recordPathOf(snapshotPathIn(workspace.gitCommonDir, recordName));
    const previous = await readRecord(recordPath);
    const record: RunRecord = {
      ...(previous ?? { runId: saved.runId, vision: saved.vision, repo: workspace.root, startedAt: new Date().toISOString(), snapshot: snapshot.path }),
      pid: process.pid,
      model: modelId,
      status: undefined,
      finishedAt: undefined,
    };
    await writeRecord(recordPath, record);
    const eventLog = await openEventLog(snapshot.path);
    announce(io, mode, `resuming ${saved.runId} from ${snapshotPath}`, snapshot.path, sandbox);
    const session = await runTaskSession({
      io,
      mode,
      snapshot,
      repo,
      tree: treeFromSnapshot(saved),
      ...(record.base ? { base: record.base } : {}),
      launch: () =>
        resumeTask(saved, {
          workspace,
          model,
          eventLog,
          onSnapshot: (s) => snapshot.write(s),
          snapshotLocation: snapshot.path,
          // Only the run branch recorded at its start vouches for a chosen --branch name.
          ...(previous?.runId === saved.runId && previous.branch ? { runBranch: previous.branch } : {}),
        }),
    }).finally(() => eventLog.close());
    await finishRecord(recordPath, record, session);
    await takeResult(io, mode, repo, record.base, session, Boolean(values.apply));
    return session.exitCode;
  }

  let vision = positionals.join(" ").trim();
  if (positionals.includes("-")) {
    if (positionals.length > 1) throw new UsageError('give the vision either as text or as "-" (read from standard input), not both');
    vision = (await readVisionFromStdin(io)).trim();
    if (!vision) throw new UsageError('the vision read from standard input ("-") is empty');
  }
  if (!vision) throw new UsageError('missing the vision: keen run "<what to do>" --repo DIR (or keen run - to read it from standard input)');
  const model = options.model ?? buildModel(modelId, io.env, settings.maxRetries);
  const repo = resolve(values.repo ?? process.cwd());
  const runId = `run_${randomUUID()}`;
  const { workspace, base } = await beforeEndpointCheck(options.model ? undefined : modelId, io.env, async () => {
    const opened = await openRepo(repo, sandbox);
    await checkNewBranch(opened, settings.branch ?? runBranchName(true, runId), settings.branch !== undefined);
    const commit = settings.base === undefined ? await headCommit(opened) : await resolveCommit(opened.root, settings.base);
    if (settings.base !== undefined && !commit) throw new UsageError(`--base ${settings.base} is not a commit in ${opened.root}`);
    if (!commit) throw new UsageError(`${opened.root} has no commits yet (its branch is unborn); a run branch starts from a commit: commit first, or pass --base`);
    return { workspace: opened, base: commit };
  });
  const defaultPath = snapshotPathIn(workspace.gitCommonDir, runId);
  const snapshot = new SnapshotFile(values.snapshot ? resolve(values.snapshot) : defaultPath);
  const mode = outputMode(io, Boolean(values.json));
  const recordPath = recordPathOf(defaultPath);
  const record: RunRecord = {
    runId,
    vision,
    repo: workspace.root,
    startedAt: new Date().toISOString(),
    pid: process.pid,
    model: modelId,
    snapshot: snapshot.path,
    ...(base ? { base } : {}),
    // Which branch is the run's own: a resume re-attaches to no other.
    branch: settings.branch ?? runBranchName(true, runId),
  };
  await writeRecord(recordPath, record);
  const eventLog = await openEventLog(snapshot.path);
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
      // The run works on its own branch and worktree; the user's checkout is only read.
      branch: settings.branch ?? true,
      // Carried-over work sits on the checkout's HEAD as it is when the run branch is made.
      ...(values["include-uncommitted"] ? { includeUncommitted: true } : base ? { base } : {}),
      eventLog,
      onSnapshot: (s) => snapshot.write(s),
      // run.completed names the file, so whoever reads the events can resume or inspect it.
      snapshotLocation: snapshot.path,
    });
  announce(io, mode, `run ${runId}`, snapshot.path, sandbox);
  const session = await runTaskSession({ io, mode, snapshot, repo: workspace.root, tree: emptyTree(), launch, ...(base ? { base } : {}) }).finally(() =>
    eventLog.close(),
  );
  await finishRecord(recordPath, record, session);
  await takeResult(io, mode, workspace.root, base, session, Boolean(values.apply));
  return session.exitCode;
}

/**
 * After a run: how to review and take its branch, or with `--apply`, the merge into the user's
 * current branch (only into a clean checkout; otherwise why not). Nothing after an interrupt.
 */
async function takeResult(io: CommandIo, mode: OutputMode, repo: string, base: string | undefined, session: TaskSessionResult, apply: boolean): Promise<void> {
  const branch = session.completed?.branch;
  if (session.interrupted || !branch || session.result.status === "interrupted") return;
  const say = (text: string) => (mode === "json" ? io.stderr(`keen: ${text}\n`) : io.stdout(`${text}\n`));
  const r = quote(repo);
  const b = quote(branch);
  if (base) say(`review: git -C ${r} diff ${base.slice(0, 12)}...${b}`);
  if (session.result.status !== "success") {
    if (apply) say(`not applied: the run ended ${session.result.status}; its work so far is on ${branch}`);
    return;
  }
  if (!apply) {
    say(`take it: git -C ${r} merge ${b}`);
    return;
  }
  say((await applyRunBranch(repo, branch, base)).message);
}

/**
 * The run's events, kept beside its snapshot (`<run>.events.ndjson`): a resumed run reads the last
 * seq from it and numbers its events strictly after, even when the process died between a
 * snapshot and the next event.
 */
async function openEventLog(snapshotPath: string): Promise<NdjsonEventLog> {
  const path = join(dirname(snapshotPath), `${basename(snapshotPath, ".json")}.events.ndjson`);
  await mkdir(dirname(path), { recursive: true });
  try {
    return await NdjsonEventLog.open(path);
  } catch (error) {
    throw new UsageError(`cannot open the event log ${path}: ${oneLine((error as Error).message)}`);
  }
}

/** The snapshot `--resume VALUE` or `--last` means: a file path, or a run id in the repository's runs folder. */
async function resumeTarget(value: string | undefined, repoFlag: string | undefined): Promise<string> {
  if (value !== undefined) {
    if (!value.trim()) throw new UsageError("--resume needs a snapshot file or a run id, got an empty string");
    const looksLikePath = value.includes("/") || value.endsWith(".json") || value.startsWith(".");
    if (looksLikePath || (await fileExists(value))) return resolve(value);
  }
  const repo = resolve(repoFlag ?? process.cwd());
  const runsDir = dirname(await defaultSnapshotPath(repo, "x"));
  const run = await findRun(runsDir, value !== undefined ? { id: value } : { last: true });
  return run.snapshotPath;
}

async function fileExists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

async function readVisionFromStdin(io: CommandIo): Promise<string> {
  if (!io.readStdin) throw new UsageError('cannot read the vision from standard input here; give it as text');
  const text = await io.readStdin();
  if (text.length > MAX_STDIN_VISION) throw new UsageError(`the vision read from standard input is longer than ${MAX_STDIN_VISION} characters`);
  return text;
}

/** `--branch NAME` must be a valid branch name that does not exist yet: a run never reuses a branch. */
/**
 * Refuses a run branch name that cannot be made cleanly: not a valid name, an existing branch, a
 * branch it would clash with as file or folder (a user branch `keen` makes every `keen/<id>`
 * impossible), or a tag of the same name (`git merge <name>` would then take the tag).
 */
async function checkNewBranch(workspace: LocalWorkspace, name: string, chosen: boolean): Promise<void> {
  const repo = workspace.root;
  const flag = chosen ? `--branch "${name}"` : `the run branch "${name}"`;
  if (chosen) {
    const execa = await loadExeca();
    const valid = await execa("git", ["check-ref-format", "--branch", name], { cwd: repo, reject: false });
    if (valid.exitCode !== 0 || name.startsWith("-")) throw new UsageError(`${flag} is not a valid branch name`);
  }
  const parts = name.split("/");
  const prefixes = parts.slice(0, -1).map((_, i) => `refs/heads/${parts.slice(0, i + 1).join("/")}`);
  const own = `refs/heads/${name}`;
  const tag = `refs/tags/${name}`;
  // Read from the ref files where they answer (no git process before the run starts), else asked of git.
  const refs =
    (await refsFromFiles(workspace.gitCommonDir, [own, tag, ...prefixes])) ??
    (await (await loadExeca())("git", ["for-each-ref", "--format=%(refname)", own, tag, ...prefixes], { cwd: repo, reject: false })).stdout.split("\n").filter(Boolean);
  const pick = chosen ? "pick another --branch, or delete that one" : "rename or delete that one, or pass --branch";
  if (refs.includes(own)) throw new UsageError(`branch ${name} already exists in ${repo}; a run never reuses a branch: ${pick}`);
  const clash = refs.find((ref) => ref.startsWith(`${own}/`) || prefixes.includes(ref));
  if (clash) throw new UsageError(`${flag} cannot be created in ${repo}: ${clash} exists and git cannot hold both; ${pick}`);
  if (refs.includes(tag)) throw new UsageError(`${flag} would share its name with the tag ${name} in ${repo}; ${pick}`);
}

/**
 * Which of `names` exist as refs, and refs below `names[0]`, read from the loose ref files and
 * `packed-refs`; undefined when the files cannot answer (a reftable repository, an unreadable entry).
 */
async function refsFromFiles(commonDir: string, names: string[]): Promise<string[] | undefined> {
  try {
    if (await lstat(join(commonDir, "reftable")).then(() => true, () => false)) return undefined;
    const packed = await readFile(join(commonDir, "packed-refs"), "utf8").catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return "";
      throw error;
    });
    const found = new Set<string>();
    for (const line of packed.split("\n")) {
      const ref = line.startsWith("#") || line.startsWith("^") ? "" : line.slice(line.indexOf(" ") + 1).trimEnd();
      if (names.includes(ref) || ref.startsWith(`${names[0]}/`)) found.add(ref);
    }
    for (const name of names) {
      const info = await lstat(join(commonDir, name)).catch((error: NodeJS.ErrnoException) => {
        if (error.code === "ENOENT" || error.code === "ENOTDIR") return null;
        throw error;
      });
      if (info?.isFile()) found.add(name);
      // A folder where the run branch would be (refs below it, or an empty leftover): git decides.
      else if (info?.isDirectory() && name === names[0]) return undefined;
    }
    return [...found];
  } catch {
    return undefined;
  }
}

/** The commit HEAD names (read from the ref files where they answer), or undefined on an unborn branch. */
async function headCommit(workspace: LocalWorkspace): Promise<string | undefined> {
  try {
    return await workspace.head();
  } catch {
    return undefined;
  }
}

/** The commit `ref` names in `repo`, or undefined. `ref` is passed after `--end-of-options`, so it is never taken as an option. */
async function resolveCommit(repo: string, ref: string): Promise<string | undefined> {
  const execa = await loadExeca();
  const result = await execa("git", ["rev-parse", "--verify", "--quiet", "--end-of-options", `${ref}^{commit}`], { cwd: repo, reject: false });
  return result.exitCode === 0 ? result.stdout.trim() : undefined;
}

async function readRecord(path: string): Promise<RunRecord | undefined> {
  try {
    const parsed = RunRecord.safeParse(JSON.parse(await readFile(path, "utf8")));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** Records how the run ended (an interrupted run stays resumable: no final status). */
async function finishRecord(path: string, record: RunRecord, session: TaskSessionResult): Promise<void> {
  if (session.interrupted) {
    await writeRecord(path, { ...record, status: "interrupted", usage: session.result.usage });
    return;
  }
  const completed = session.completed as (KeenEventOf<"run.completed"> & { costUsd?: number; branch?: string }) | undefined;
  await writeRecord(path, {
    ...record,
    status: session.result.status,
    finishedAt: new Date().toISOString(),
    branch: completed?.branch ?? session.result.branch,
    head: session.result.commit,
    usage: session.result.usage,
    ...(typeof completed?.costUsd === "number" ? { costUsd: completed.costUsd } : {}),
  });
}

/**
 * Runs `prepare` (opening and reading the repository: nothing of the run is written yet) while one
 * cheap request checks the model endpoint, unless `model` is undefined (a model given in code).
 * An error of `prepare` comes first and stops the check; then a refused key or a dead URL ends the
 * command with exit code 3, before anything is written.
 */
async function beforeEndpointCheck<T>(model: string | undefined, env: NodeJS.ProcessEnv, prepare: () => Promise<T>): Promise<T> {
  const stop = new AbortController();
  const checked =
    model === undefined
      ? undefined
      : checkModelEndpoint({ apiKey: env.ANTHROPIC_API_KEY ?? "", model, signal: stop.signal, ...(env.ANTHROPIC_BASE_URL ? { baseURL: env.ANTHROPIC_BASE_URL } : {}) });
  checked?.catch(() => {}); // Awaited below once `prepare` succeeded.
  let prepared: T;
  try {
    prepared = await prepare();
  } catch (error) {
    stop.abort();
    throw error;
  }
  await checked;
  return prepared;
}

/** Says where the snapshot is and how to resume, before the run starts. */
function announce(io: CommandIo, mode: "json" | "live" | "lines", what: string, snapshotPath: string, sandbox: boolean | SandboxOptions): void {
  const text = `keen: ${what} · snapshot ${snapshotPath} (resume: keen run --resume ${quote(snapshotPath)})${sandbox ? "" : " · sandbox off"}\n`;
  if (mode === "json") io.stderr(text);
  else io.stdout(text);
}

type Flags = ReturnType<typeof parseCommandArgs<typeof RUN_OPTIONS>>["values"];

interface Settings {
  limits: Partial<TaskLimits>;
  branch?: string;
  base?: string;
  maxRetries?: number;
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
  const budgetUsd = values["max-budget-usd"];
  if (budgetUsd !== undefined) {
    const value = /^\d+(\.\d+)?$/.test(budgetUsd.trim()) ? Number(budgetUsd) : Number.NaN;
    if (!Number.isFinite(value) || value <= 0) throw new UsageError(`--max-budget-usd must be a positive number of dollars, got "${budgetUsd}"`);
    limits.maxBudgetUsd = value;
  }
  const branch = values.branch;
  if (branch !== undefined && !branch.trim()) throw new UsageError("--branch needs a branch name, got an empty string");
  const base = values.base;
  if (base !== undefined && !base.trim()) throw new UsageError("--base needs a commit, branch or tag, got an empty string");
  if (base !== undefined && values["include-uncommitted"]) {
    throw new UsageError("--include-uncommitted carries work from your checkout's HEAD; it cannot start from another --base");
  }
  const concurrency = integerFlag(values, "concurrency", 1);
  const maxRetries = integerFlag(values, "max-retries", 0);
  const onConflict = values["on-conflict"];
  if (onConflict !== undefined && onConflict !== "resolve" && onConflict !== "rollback") {
    throw new UsageError(`--on-conflict must be resolve or rollback, got "${onConflict}"`);
  }
  const validate = values.validate;
  if (validate !== undefined && !validate.trim()) throw new UsageError("--validate needs a command, got an empty string");
  return {
    limits,
    ...(branch !== undefined ? { branch } : {}),
    ...(base !== undefined ? { base } : {}),
    ...(maxRetries !== undefined ? { maxRetries } : {}),
    ...(concurrency !== undefined ? { concurrency } : {}),
    ...(onConflict ? { onConflict } : {}),
    ...(validate ? { validate } : {}),
  };
}

type IntegerFlag = "max-depth" | "max-children" | "max-agents" | "max-turns" | "token-budget" | "concurrency" | "max-retries";

function integerFlag(values: Flags, name: IntegerFlag, min: 0 | 1): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const value = /^\d+$/.test(raw.trim()) ? Number(raw) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min) {
    throw new UsageError(`--${name} must be a ${min === 0 ? "non-negative" : "positive"} integer, got "${raw}"`);
  }
  return value;
}

function buildModel(id: string, env: NodeJS.ProcessEnv, maxRetries?: number): Model {
  const apiKey = env.ANTHROPIC_API_KEY;
  if (!apiKey) throw new UsageError("ANTHROPIC_API_KEY is not set (export it, or try the offline `keen demo`)");
  return anthropic({
    model: id,
    apiKey,
    ...(env.ANTHROPIC_BASE_URL ? { baseURL: env.ANTHROPIC_BASE_URL } : {}),
    ...(maxRetries !== undefined ? { retry: { maxRetries } } : {}),
  });
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
  // A run on its own run branch re-attaches its worktree; the user's checkout may be on any branch.
  if (snapshot.runBranch) return;
  const branch = await workspace.currentBranch();
  if (branch !== root.branch) {
    throw new UsageError(`${repo} is on branch ${branch} but ${snapshot.runId} works on ${root.branch}; check it out (or pass --repo) first`);
  }
}
