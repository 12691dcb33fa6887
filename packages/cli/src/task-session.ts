import type { KeenEvent, KeenEventOf, TaskResult, TaskRun } from "@keen/agent-core";
import { MODEL_UNAVAILABLE_EXIT_CODE, type CommandIo, type Io } from "./cli-error.js";
import type { SnapshotFile } from "./snapshot-file.js";
import { agentsInOrder, reduceTree, type TreeState } from "./tree/tree-state.js";
import { loadExeca } from "./lazy-execa.js";

/** `json`: NDJSON events on stdout; `live`: the agent tree redrawn in place; `lines`: a line per event. */
export type OutputMode = "json" | "live" | "lines";

/**
 * Picks the output: NDJSON when asked, the live tree on a terminal, plain lines otherwise.
 * `KEEN_FORCE_TTY=1` forces the live view (tests, terminals that hide themselves), and
 * `KEEN_FORCE_TTY=0` turns it off.
 */
export function outputMode(io: Io, json: boolean): OutputMode {
  if (json) return "json";
  const forced = io.env.KEEN_FORCE_TTY;
  if (forced === "1") return "live";
  if (forced === "0") return "lines";
  return io.isTTY ? "live" : "lines";
}

export interface TaskSessionOptions {
  io: CommandIo;
  mode: OutputMode;
  snapshot: SnapshotFile;
  /** The tree before the first event: empty for a new run, from the snapshot for a resumed one. */
  tree: TreeState;
  /** Starts (or resumes) the task; called once. */
  launch: () => TaskRun;
  /** Repository the run works in, for the closing hint. */
  repo: string;
  /** What to say after an interrupt; by default how to resume with `keen run --resume`. */
  interruptedMessage?: string;
  /** The commit the run started from, for the closing diff stat. */
  base?: string;
}

export interface TaskSessionResult {
  exitCode: number;
  result: TaskResult;
  tree: TreeState;
  interrupted: boolean;
  /** The run's `run.completed` event, when it arrived. */
  completed?: KeenEventOf<"run.completed">;
}

/** Exit code after Ctrl-C, as shells report a process ended by SIGINT. */
export const INTERRUPTED_EXIT_CODE = 130;

/**
 * Runs a task to its end while showing it: prints events in the chosen mode, keeps the
 * snapshot file current, and turns the first SIGINT or SIGTERM into a clean stop (children
 * aborted, their work committed on their branches, the last resumable snapshot kept). A second
 * signal exits at once.
 */
export async function runTaskSession(options: TaskSessionOptions): Promise<TaskSessionResult> {
  const { io, mode, snapshot } = options;
  const columns = () => io.columns?.() || Number(io.env.COLUMNS) || 80;
  const views = mode === "json" ? undefined : await import("./session-views.js");
  const view = views && mode === "live" ? new views.LiveTreeView({ write: io.raw, columns, color: !io.env.NO_COLOR }) : undefined;
  let tree = options.tree;
  let interrupted = false;
  let completed: KeenEventOf<"run.completed"> | undefined;
  const resumeHint = `resume with: keen run --resume ${quote(snapshot.path)}`;

  const run = options.launch();
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) {
      view?.release();
      io.stderr(`keen: stopped at once; ${options.interruptedMessage ?? resumeHint}\n`);
      dieBy(signal);
    }
    interrupted = true;
    snapshot.freeze();
    run.abort("interrupted");
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  try {
    for await (const event of run as AsyncIterable<KeenEvent>) {
      if (event.type === "run.completed") completed = event;
      if (mode === "json") {
        io.raw(`${JSON.stringify(event)}\n`);
        continue;
      }
      tree = reduceTree(tree, event);
      if (view) view.update(tree);
      else {
        const line = views!.describeEvent(event);
        if (line) io.stdout(`${line}\n`);
      }
    }
    const result = await run.result;
    await snapshot.close();
    view?.finish(tree);

    if (snapshot.error) io.stderr(`keen: could not save the snapshot to ${snapshot.path}: ${snapshot.error.message}\n`);
    if (interrupted) {
      io.stderr(`keen: interrupted; agents stopped, ${options.interruptedMessage ?? `snapshot saved at ${snapshot.path}; ${resumeHint}`}\n`);
      return { exitCode: INTERRUPTED_EXIT_CODE, result, tree, interrupted, ...(completed ? { completed } : {}) };
    }
    if (views) {
      const stat = options.base && result.commit ? await diffStat(options.repo, options.base, result.commit) : undefined;
      io.stdout(closingSummary(tree, result, options.repo, snapshot.path, views.formatTokens, stat, completed?.costUsd));
    }
    const done = { result, tree, interrupted, ...(completed ? { completed } : {}) };
    if (result.status === "success") return { exitCode: 0, ...done };
    if (result.status === "interrupted") {
      // The model stayed unavailable after its retries: the run stopped where it can go on.
      io.stderr(`keen: run interrupted: ${oneLine(result.error?.message ?? result.summary)}; ${options.interruptedMessage ?? resumeHint}\n`);
      return { exitCode: result.error?.code === "model_unavailable" ? MODEL_UNAVAILABLE_EXIT_CODE : 1, ...done };
    }
    io.stderr(`keen: task ${result.status}: ${oneLine(result.error?.message ?? result.summary)}\n`);
    return { exitCode: 1, ...done };
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    view?.release();
    await snapshot.close();
  }
}

/**
 * `git diff --stat` between the run's starting commit and its result, in the user's repository.
 * Read-only (two commits, no working tree); no external diff drivers or text conversions run.
 */
async function diffStat(repo: string, base: string, head: string): Promise<string | undefined> {
  if (base === head) return undefined;
  const execa = await loadExeca();
  const result = await execa("git", ["-c", "core.fsmonitor=false", "diff", "--no-ext-diff", "--no-textconv", "--stat=100", base, head, "--"], { cwd: repo, reject: false });
  return result.exitCode === 0 && result.stdout.trim() ? result.stdout.replace(/^\s+/gm, "  ").trimEnd() : undefined;
}

/**
 * Ends the process at once by the signal it received, as if it had no handler (a shell reports
 * 130 for SIGINT). `process.exit()` is not enough: it waits for libuv's threadpool at exit, so
 * one thread blocked in a read (a FIFO, a hung network file system) would hold the process.
 */
function dieBy(signal: NodeJS.Signals): never {
  process.removeAllListeners(signal);
  process.kill(process.pid, signal);
  // The signal is delivered before kill() returns for the calling thread; this is not reached.
  process.exit(INTERRUPTED_EXIT_CODE);
}

/** What happened and where to look: status, the agent's summary, the changes, branches with their merge results, the snapshot. */
function closingSummary(
  tree: TreeState,
  result: TaskResult,
  repo: string,
  snapshotPath: string,
  formatTokens: (usage: TaskResult["usage"]) => string,
  stat?: string,
  costUsd?: number,
): string {
  const agents = agentsInOrder(tree);
  const seconds = tree.durationMs !== undefined ? ` in ${(tree.durationMs / 1000).toFixed(1)} s` : "";
  const branches = result.agents
    .filter((agent) => agent.parentId !== null)
    .map((agent) => {
      const merge = result.agents.find((a) => a.id === agent.parentId)?.merges[agent.id]?.status;
      return `${agent.branch} (${merge === "rolled_back" ? "rolled back, kept" : merge === "skipped" || merge === undefined ? "not merged" : merge})`;
    });
  const lines = [
    "",
    `${result.status}${seconds} · ${agents.length} agent${agents.length === 1 ? "" : "s"} · tokens ${formatTokens(result.usage)}${costUsd !== undefined ? ` · $${costUsd.toFixed(costUsd < 1 ? 4 : 2)}` : ""}`,
    ...(result.summary.trim() ? ["", result.summary.trim(), ""] : []),
    ...(stat ? [stat] : []),
    `branch ${result.branch}${result.commit ? ` at ${result.commit.slice(0, 10)}` : ""}${branches.length ? `; child branches: ${branches.join(", ")}` : ""}`,
    `snapshot ${snapshotPath}`,
    `history: git -C ${quote(repo)} log --graph --oneline --all`,
  ];
  return `${lines.join("\n")}\n`;
}

/** Collapses whitespace (newlines included) so a message fits on one line. */
export function oneLine(text: string): string {
  return text.replace(/\s+/g, " ").trim();
}

/** Quotes a path for a shell when it needs it. */
export function quote(path: string): string {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : `'${path.replace(/'/g, `'\\''`)}'`;
}
