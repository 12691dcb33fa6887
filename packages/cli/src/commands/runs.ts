import { dirname, resolve } from "node:path";
import { parseCommandArgs } from "../args.js";
import type { CommandIo } from "../cli-error.js";
import { listRuns, pruneRuns, type RunListing } from "../run-records.js";
import { defaultSnapshotPath } from "../snapshot-file.js";
import { quote } from "../task-session.js";
import { terminalLine } from "../terminal-text.js";
import { displayWidth, fitWidth, padWidth } from "../terminal-width.js";

export const RUNS_HELP = `Usage: keen runs [--repo DIR] [--prune] [--json]

Lists the runs saved in a repository (<repo>/.git/keen/runs), newest first: id, status,
branch, tokens, cost, when it started and its vision. A run whose process is gone before it
finished is "interrupted": continue it with keen run --resume ID (or --last).

Options:
  --repo DIR   the git repository (default: current directory)
  --prune      remove the snapshots of finished runs (interrupted ones are kept)
  --json       one JSON object per run on stdout
  -h, --help   show this help`;

const RUNS_OPTIONS = {
  repo: { type: "string" },
  prune: { type: "boolean" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

export async function runsCommand(argv: string[], io: CommandIo): Promise<number> {
  const { values } = parseCommandArgs(argv, RUNS_OPTIONS, "runs", false);
  if (values.help) {
    io.stdout(`${RUNS_HELP}\n`);
    return 0;
  }
  const repo = resolve(values.repo ?? process.cwd());
  const runsDir = dirname(await defaultSnapshotPath(repo, "x"));
  if (values.prune) {
    const removed = await pruneRuns(runsDir);
    if (values.json) for (const run of removed) io.raw(`${JSON.stringify(toJson(run))}\n`);
    else io.stdout(removed.length ? `removed ${removed.length} finished run${removed.length === 1 ? "" : "s"}: ${removed.map((r) => r.runId).join(", ")}\n` : "no finished runs to remove\n");
    return 0;
  }
  const runs = await listRuns(runsDir);
  if (values.json) {
    for (const run of runs) io.raw(`${JSON.stringify(toJson(run))}\n`);
    return 0;
  }
  if (!runs.length) {
    io.stdout(`no runs in ${repo} (start one with keen run "<vision>" --repo ${quote(repo)})\n`);
    return 0;
  }
  io.stdout(`${table(runs, io.isTTY ? (io.columns?.() ?? 120) : 160)}\n`);
  return 0;
}

function toJson(run: RunListing) {
  return {
    runId: run.runId,
    vision: run.vision,
    status: run.status,
    branch: run.branch,
    tokens: totalTokens(run),
    usage: run.usage,
    costUsd: run.costUsd ?? null,
    startedAt: run.startedAt.toISOString(),
    snapshot: run.snapshotPath,
  };
}

function totalTokens(run: RunListing): number {
  const u = run.usage;
  return u.inputTokens + u.outputTokens + u.cacheCreationInputTokens + u.cacheReadInputTokens;
}

function compact(n: number): string {
  if (n < 1000) return String(n);
  if (n < 1_000_000) return `${(n / 1000).toFixed(n < 10_000 ? 1 : 0)}k`;
  return `${(n / 1_000_000).toFixed(1)}M`;
}

function started(date: Date): string {
  return Number.isNaN(date.getTime()) ? "?" : date.toISOString().slice(0, 16).replace("T", " ");
}

/** A plain table, the vision column fitted to what is left of `width`. */
function table(runs: RunListing[], width: number): string {
  const header = ["ID", "STATUS", "BRANCH", "TOKENS", "COST", "STARTED (UTC)", "VISION"];
  const rows = runs.map((run) => [
    run.runId,
    run.status,
    terminalLine(run.branch),
    compact(totalTokens(run)),
    run.costUsd !== undefined ? `$${run.costUsd.toFixed(2)}` : "-",
    started(run.startedAt),
    terminalLine(run.vision.trim().split("\n")[0] ?? ""),
  ]);
  const widths = header.slice(0, -1).map((title, i) => Math.max(displayWidth(title), ...rows.map((row) => displayWidth(row[i]!))));
  const used = widths.reduce((sum, w) => sum + w + 2, 0);
  const visionWidth = Math.max(12, width - 1 - used);
  return [header, ...rows]
    .map((row) => [...row.slice(0, -1).map((cell, i) => padWidth(cell, widths[i]! + 2)), fitWidth(row.at(-1)!, visionWidth)].join("").trimEnd())
    .join("\n");
}
