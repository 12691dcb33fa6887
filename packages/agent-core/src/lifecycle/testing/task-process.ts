/**
 * Runs a task in its own process, for tests that kill it: `node --import tsx task-process.ts <json config>`.
 * Writes a snapshot after every step (atomically), keeps every event in `<snapshot>.events.ndjson`,
 * and exits 0 when the run succeeds. With `killAt`, it SIGKILLs itself at the first of those
 * points the run reaches (a deterministic crash, no timers), after appending the point's name to
 * `<snapshot>.kills`.
 */
import { appendFileSync, existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { anthropic } from "../../model/anthropic.js";
import { NdjsonEventLog } from "../../run/event-log.js";
import { LocalWorkspace } from "../../workspace/local-workspace.js";
import { serializeSnapshot } from "../snapshots.js";
import { resumeTask, startTask } from "../start-task.js";
import { TaskSnapshot } from "../task-state.js";

export interface TaskProcessConfig {
  mode: "start" | "resume";
  repo: string;
  baseURL: string;
  snapshotPath: string;
  vision: string;
  maxConcurrency?: number;
  /** The run's id (so two repositories get the same run branch names). */
  runId?: string;
  onConflict?: "resolve" | "rollback";
  killAt?: KillPoint[];
}

/**
 * Where the process kills itself: as `agent` emits a `tool.started`/`tool.completed` event for
 * `tool`; once `file` appears in the agent's worktree after it started `tool`; right after
 * the first snapshot that shows `agent` in `phase`; or as the merge of child `agent` into its
 * parent is reported (`git.merge`), before the snapshot that records it.
 */
export type KillPoint = { name: string } & (
  | { on: "tool.started" | "tool.completed"; agent: string; tool: string }
  | { on: "file"; agent: string; tool: string; file: string }
  | { on: "snapshot"; agent: string; phase: string }
  | { on: "git.merge"; agent: string }
);

const config = JSON.parse(process.argv[2]!) as TaskProcessConfig;
const killPoints = config.killAt ?? [];

function die(point: KillPoint): void {
  appendFileSync(`${config.snapshotPath}.kills`, `${point.name}\n`);
  process.kill(process.pid, "SIGKILL");
}

const workspace = await LocalWorkspace.open(config.repo);
const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: config.baseURL, retry: { baseDelayMs: 5, maxRetries: 1 } });
const saved = config.mode === "resume" ? TaskSnapshot.parse(JSON.parse(readFileSync(config.snapshotPath, "utf8"))) : undefined;
let latest = saved;
const phaseOf = (snapshot: TaskSnapshot | undefined, id: string) => snapshot?.agents.find((agent) => agent.id === id)?.phase;
const onSnapshot = (snapshot: TaskSnapshot) => {
  const temp = `${config.snapshotPath}.tmp`;
  // As a host stores it: every SIGKILL-and-resume test reads back what serializeSnapshot wrote.
  writeFileSync(temp, serializeSnapshot(snapshot));
  renameSync(temp, config.snapshotPath);
  const previous = latest;
  latest = snapshot;
  for (const point of killPoints) {
    // The first snapshot that moves the agent into the phase.
    if (point.on === "snapshot" && phaseOf(snapshot, point.agent) === point.phase && phaseOf(previous, point.agent) !== point.phase) die(point);
  }
};
const eventLog = await NdjsonEventLog.open(`${config.snapshotPath}.events.ndjson`);
const run =
  config.mode === "start"
    ? startTask({
        vision: config.vision,
        workspace,
        model,
        onSnapshot,
        eventLog,
        maxConcurrency: config.maxConcurrency ?? 1,
        ...(config.onConflict ? { onConflict: config.onConflict } : {}),
        ...(config.runId ? { runId: config.runId } : {}),
      })
    : resumeTask(saved!, { workspace, model, onSnapshot, eventLog });
for (const on of ["tool.started", "tool.completed"] as const) {
  run.on(on, (event) => {
    for (const point of killPoints) {
      if (point.on === "snapshot" || point.on === "git.merge" || event.agentId !== point.agent || event.name !== point.tool) continue;
      if (point.on === on) die(point);
      if (point.on === "file" && on === "tool.started") {
        // keen's default place for a child's worktree: <repo>/.git/keen/worktrees/<branch>.
        const branch = latest?.agents.find((agent) => agent.id === point.agent)?.branch ?? "";
        const path = join(config.repo, ".git", "keen", "worktrees", branch, point.file);
        setInterval(() => existsSync(path) && die(point), 2).unref();
      }
    }
  });
}
run.on("git.merge", (event) => {
  for (const point of killPoints) {
    if (point.on === "git.merge" && event.branch === latest?.agents.find((agent) => agent.id === point.agent)?.branch) die(point);
  }
});
const result = await run.result;
process.stdout.write(`${JSON.stringify({ status: result.status, error: result.error, lastSeq: run.events.seq - 1, firstSeq: run.events.history[0]?.seq })}\n`);
process.exitCode = result.status === "success" ? 0 : 1;
