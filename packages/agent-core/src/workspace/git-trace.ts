import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** One event of git's trace2 event stream (the fields keen's tests read). */
export interface GitTraceEvent {
  event: string;
  /** `cmd_name`: the git command. */
  name?: string;
  /** `start` and `child_start`: the command line. */
  argv?: string[];
  time?: string;
}

/**
 * For tests: runs `step` with git's trace2 event stream (`GIT_TRACE2_EVENT`) written to a file of
 * its own, and returns its value with every event the git processes started meanwhile wrote
 * (keen's git calls inherit the variable).
 */
export async function withGitTrace<T>(step: () => Promise<T>): Promise<{ value: T; events: GitTraceEvent[] }> {
  const dir = await mkdtemp(join(tmpdir(), "keen-trace-"));
  const file = join(dir, "events.jsonl");
  const previous = process.env.GIT_TRACE2_EVENT;
  process.env.GIT_TRACE2_EVENT = file;
  try {
    const value = await step();
    const text = await readFile(file, "utf8").catch(() => "");
    const events = text.split("\n").filter(Boolean).map((line) => JSON.parse(line) as GitTraceEvent);
    return { value, events };
  } finally {
    if (previous === undefined) delete process.env.GIT_TRACE2_EVENT;
    else process.env.GIT_TRACE2_EVENT = previous;
    await rm(dir, { recursive: true, force: true });
  }
}

/** The git command of each `cmd_name` event, counted. */
export function countGitCommands(events: GitTraceEvent[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const event of events) if (event.event === "cmd_name" && event.name) counts[event.name] = (counts[event.name] ?? 0) + 1;
  return counts;
}
