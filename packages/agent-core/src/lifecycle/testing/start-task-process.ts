import { fileURLToPath } from "node:url";
import { execa } from "execa";
import type { TaskProcessConfig } from "./task-process.js";

const entry = fileURLToPath(new URL("./task-process.ts", import.meta.url));
const repoRoot = fileURLToPath(new URL("../../../../..", import.meta.url));

/**
 * Starts or resumes a task in a child process of its own (`task-process.ts`), which kills itself
 * with SIGKILL at `config.killAt`; resolves with its result, never rejecting on its exit code.
 */
export function startTaskProcess(config: TaskProcessConfig) {
  return execa(process.execPath, ["--import", "tsx", entry, JSON.stringify(config)], { cwd: repoRoot, reject: false, timeout: 90_000 });
}
