import { readdir, readFile, rename, rm, stat, writeFile, mkdir } from "node:fs/promises";
import { basename, dirname, isAbsolute, join } from "node:path";
import * as z from "zod";
import { addUsage, emptyUsage, TaskSnapshot, Usage } from "@keen/agent-core";
import { UsageError } from "./cli-error.js";

/**
 * What `keen run` records about a run beside its snapshot (`<runId>.info.json`): what the
 * snapshot does not hold — when it started, the process, the model, the base commit — and, once
 * it ended, its outcome. `keen runs` lists runs from these and the snapshots.
 */
export const RunRecord = z.object({
  runId: z.string(),
  vision: z.string(),
  repo: z.string(),
  startedAt: z.string(),
  pid: z.number().int(),
  model: z.string(),
  snapshot: z.string(),
  /** The commit the run started from. */
  base: z.string().optional(),
  /** The branch holding the run's result. */
  branch: z.string().optional(),
  status: z.string().optional(),
  finishedAt: z.string().optional(),
  head: z.string().nullable().optional(),
  usage: Usage.optional(),
  costUsd: z.number().optional(),
});
export type RunRecord = z.infer<typeof RunRecord>;

/** The record file that goes with a snapshot file. */
export function recordPathOf(snapshotPath: string): string {
  return join(dirname(snapshotPath), `${basename(snapshotPath, ".json")}.info.json`);
}

/** Writes a run record atomically. Failures are returned, not thrown: a record never stops a run. */
export async function writeRecord(path: string, record: RunRecord): Promise<Error | undefined> {
  try {
    await mkdir(dirname(path), { recursive: true });
    const temp = `${path}.${process.pid}.tmp`;
    await writeFile(temp, `${JSON.stringify(record)}\n`);
    await rename(temp, path);
    return undefined;
  } catch (error) {
    return error instanceof Error ? error : new Error(String(error));
  }
}

async function readJson<T>(path: string, schema: z.ZodType<T>): Promise<T | undefined> {
  try {
    const parsed = schema.safeParse(JSON.parse(await readFile(path, "utf8")));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** One run as `keen runs` shows it. */
export interface RunListing {
  runId: string;
  vision: string;
  /** `success`, `failed`, `error`, `aborted`, `running` (its process is alive) or `interrupted` (resumable). */
  status: string;
  /** True when the run ended and cannot be resumed. */
  finished: boolean;
  branch: string;
  usage: Usage;
  costUsd?: number;
  startedAt: Date;
  snapshotPath: string;
  recordPath: string;
}

function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * The runs saved in a repository's default snapshot folder (`<git dir>/keen/runs`), newest first.
 * Files that are not snapshots are skipped.
 */
export async function listRuns(runsDir: string): Promise<RunListing[]> {
  let names: string[];
  try {
    names = await readdir(runsDir);
  } catch {
    return [];
  }
  const out: RunListing[] = [];
  const seen = new Set<string>();
  const add = async (snapshotPath: string, recordPath: string, record: RunRecord | undefined) => {
    const snapshot = await readJson(snapshotPath, TaskSnapshot);
    if (!snapshot || seen.has(snapshotPath)) return;
    seen.add(snapshotPath);
    const root = snapshot.agents.find((agent) => agent.parentId === null);
    const done = root?.phase === "DONE";
    const status = done ? (root?.status ?? "finished") : record && record.status === undefined && processAlive(record.pid) ? "running" : "interrupted";
    const startedAt = record ? new Date(record.startedAt) : (await stat(snapshotPath)).birthtime;
    out.push({
      runId: snapshot.runId,
      vision: snapshot.vision,
      status,
      finished: done,
      branch: record?.branch ?? root?.branch ?? "",
      usage: record?.usage ?? snapshot.agents.reduce((sum, agent) => addUsage(sum, agent.usage), emptyUsage()),
      ...(record?.costUsd !== undefined ? { costUsd: record.costUsd } : {}),
      startedAt,
      snapshotPath,
      recordPath,
    });
  };
  for (const name of names) {
    if (!name.endsWith(".json") || name.endsWith(".info.json")) continue;
    const snapshotPath = join(runsDir, name);
    await add(snapshotPath, recordPathOf(snapshotPath), await readJson(recordPathOf(snapshotPath), RunRecord));
  }
  // Runs whose snapshot was kept elsewhere (`--snapshot FILE`) are found through their record.
  for (const name of names) {
    if (!name.endsWith(".info.json")) continue;
    const record = await readJson(join(runsDir, name), RunRecord);
    if (record && isAbsolute(record.snapshot)) await add(record.snapshot, join(runsDir, name), record);
  }
  return out.sort((a, b) => b.startedAt.getTime() - a.startedAt.getTime());
}

/**
 * Removes finished runs: their record, and their snapshot and event log when they lie in the runs folder (a
 * snapshot kept elsewhere with `--snapshot` is the user's file and stays). Files are named from
 * the folder's own listing, never from a snapshot's contents.
 */
export async function pruneRuns(runsDir: string): Promise<RunListing[]> {
  const finished = (await listRuns(runsDir)).filter((run) => run.finished);
  const names = await readdir(runsDir).catch(() => [] as string[]);
  for (const run of finished) {
    const own = [run.snapshotPath, run.recordPath].filter((path) => dirname(path) === runsDir).map((path) => basename(path));
    if (dirname(run.snapshotPath) === runsDir) {
      await rm(run.snapshotPath, { force: true });
      await rm(join(runsDir, `${basename(run.snapshotPath, ".json")}.events.ndjson`), { force: true });
    }
    if (dirname(run.recordPath) === runsDir) await rm(run.recordPath, { force: true });
    // What a process killed between writing and renaming one of them left: `<file>.<pid>.tmp`.
    for (const name of names) {
      const temp = /^(.+)\.(\d+)\.tmp$/.exec(name);
      if (temp && own.includes(temp[1]!) && !processAlive(Number(temp[2]))) await rm(join(runsDir, name), { force: true });
    }
  }
  return finished;
}

/**
 * Finds the snapshot `--resume` means: a run id (or an unambiguous start of one) in the
 * repository's runs folder, or with `last`, the newest run that can still be resumed.
 */
export async function findRun(runsDir: string, which: { id: string } | { last: true }): Promise<RunListing> {
  const runs = await listRuns(runsDir);
  if ("last" in which) {
    const last = runs.find((run) => !run.finished && run.status !== "running");
    if (!last) throw new UsageError(`no interrupted run to resume in ${runsDir}`);
    return last;
  }
  const exact = runs.find((run) => run.runId === which.id);
  if (exact) return exact;
  const matches = runs.filter((run) => run.runId.startsWith(which.id) || run.runId.startsWith(`run_${which.id}`));
  if (matches.length === 1) return matches[0]!;
  if (matches.length > 1) throw new UsageError(`"${which.id}" matches ${matches.length} runs (${matches.map((r) => r.runId).join(", ")}); give more of the id`);
  throw new UsageError(`no run "${which.id}" in ${runsDir} (see keen runs)`);
}
