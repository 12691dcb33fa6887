import * as z from "zod";
import { defineTool, type Tool } from "../define-tool.js";

export interface RunCommandOptions {
  /** Default timeout in ms. Default 120 000. */
  defaultTimeoutMs?: number;
  /** The model may ask for longer, up to this. Default 600 000. */
  maxTimeoutMs?: number;
  /** Output cap in bytes. Default 30 000. */
  maxOutputBytes?: number;
  /**
   * Commands may read but not change the workspace (for EXPLORE and PLAN). The sandbox mounts
   * the checkout read-only; a workspace without a sandbox refuses such commands. Default false.
   */
  readOnly?: boolean;
}

const RunCommandInput = z.object({
  command: z.string().min(1).describe("A shell command, run with /bin/sh in the repository root"),
  timeout_ms: z.number().int().min(1).optional().describe("Kill the command after this long"),
});

/**
 * The `run_command` tool with its limits. The whole process tree is killed on timeout or abort.
 * With `readOnly` the tool says so to the model and every command runs with the checkout read-only.
 *
 * @example
 * const tools = [readFileTool, runCommandTool({ maxTimeoutMs: 60_000 })];
 * const exploring = [readFileTool, runCommandTool({ readOnly: true })];
 */
export function runCommandTool(options: RunCommandOptions = {}): Tool<z.infer<typeof RunCommandInput>> {
  const defaultTimeout = options.defaultTimeoutMs ?? 120_000;
  const maxTimeout = options.maxTimeoutMs ?? 600_000;
  const maxOutputBytes = options.maxOutputBytes ?? 30_000;
  const readOnly = options.readOnly === true;
  const purpose = readOnly
    ? "Run a read-only shell command in the repository root to inspect it (git log, git diff, ls, grep, running existing scripts that only read). The repository is mounted read-only: commands that write files there fail, and nothing you run here can change it."
    : "Run a shell command in the repository root (tests, builds, git, scripts).";
  return defineTool({
    name: "run_command",
    description: `${purpose} Output (stdout and stderr together) is capped at ${maxOutputBytes} bytes. Default timeout ${defaultTimeout / 1000} s, at most ${maxTimeout / 1000} s. Nothing runs interactively: stdin is closed.`,
    input: RunCommandInput,
    readOnly,
    async execute({ command, timeout_ms }, { workspace, signal }) {
      const timeoutMs = Math.min(timeout_ms ?? defaultTimeout, maxTimeout);
      const result = await workspace.exec(command, { timeoutMs, maxOutputBytes, signal, ...(readOnly ? { readOnly: true } : {}) });
      const status = result.timedOut
        ? `timed out after ${timeoutMs} ms (process tree killed)`
        : result.aborted
          ? "aborted (process tree killed)"
          : `exit code ${result.exitCode}`;
      const output = result.output.trim() ? result.output : "(no output)";
      return { content: `${output}\n[${status}]`, isError: result.timedOut || result.aborted || result.exitCode !== 0 };
    },
  });
}
