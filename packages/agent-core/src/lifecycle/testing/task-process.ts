/**
 * Runs a task in its own process, for tests that kill it: `node --import tsx task-process.ts <json config>`.
 * Writes a snapshot after every step (atomically), keeps every event in `<snapshot>.events.ndjson`,
 * and exits 0 when the run succeeds.
 */
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { anthropic } from "../../model/anthropic.js";
import { NdjsonEventLog } from "../../run/event-log.js";
import { LocalWorkspace } from "../../workspace/local-workspace.js";
import { resumeTask, startTask } from "../start-task.js";
import { TaskSnapshot } from "../task-state.js";

interface Config {
  mode: "start" | "resume";
  repo: string;
  baseURL: string;
  snapshotPath: string;
  vision: string;
  maxConcurrency?: number;
  /** The run's id (so two repositories get the same run branch names). */
  runId?: string;
}

const config = JSON.parse(process.argv[2]!) as Config;
const workspace = await LocalWorkspace.open(config.repo);
const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: config.baseURL, retry: { baseDelayMs: 5, maxRetries: 1 } });
const onSnapshot = (snapshot: TaskSnapshot) => {
  const temp = `${config.snapshotPath}.tmp`;
  writeFileSync(temp, JSON.stringify(snapshot));
  renameSync(temp, config.snapshotPath);
};
const eventLog = await NdjsonEventLog.open(`${config.snapshotPath}.events.ndjson`);
const run =
  config.mode === "start"
    ? startTask({ vision: config.vision, workspace, model, onSnapshot, eventLog, maxConcurrency: config.maxConcurrency ?? 1, ...(config.runId ? { runId: config.runId } : {}) })
    : resumeTask(TaskSnapshot.parse(JSON.parse(readFileSync(config.snapshotPath, "utf8"))), { workspace, model, onSnapshot, eventLog });
const result = await run.result;
process.stdout.write(`${JSON.stringify({ status: result.status, error: result.error, lastSeq: run.events.seq - 1, firstSeq: run.events.history[0]?.seq })}\n`);
process.exitCode = result.status === "success" ? 0 : 1;
