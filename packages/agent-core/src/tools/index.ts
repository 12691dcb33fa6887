import type { Tool } from "./define-tool.js";
import { editFileTool } from "./builtin/edit-file.js";
import { listFilesTool } from "./builtin/list-files.js";
import { readFileTool } from "./builtin/read-file.js";
import { runCommandTool, type RunCommandOptions } from "./builtin/run-command.js";
import { searchFilesTool } from "./builtin/search-files.js";
import { writeFileTool } from "./builtin/write-file.js";

export * from "./define-tool.js";
export { editFileTool, listFilesTool, readFileTool, runCommandTool, searchFilesTool, writeFileTool, type RunCommandOptions };

/**
 * The file, search and command tools, in the order the model sees them.
 *
 * @example
 * startRun({ vision, workspace, model, tools: builtinTools({ runCommand: { maxTimeoutMs: 60_000 } }) });
 */
export function builtinTools(options: { runCommand?: RunCommandOptions } = {}): Tool<any>[] {
  return [readFileTool, listFilesTool, searchFilesTool, writeFileTool, editFileTool, runCommandTool(options.runCommand)];
}

/**
 * Tools that never change the workspace (for exploring and planning), including a read-only
 * `run_command` (it needs a sandboxed workspace; without one it answers with an error).
 *
 * @example
 * startRun({ vision: "Explain the build", workspace, model, tools: readOnlyTools({ runCommand: { maxTimeoutMs: 30_000 } }) });
 */
export function readOnlyTools(options: { runCommand?: RunCommandOptions } = {}): Tool<any>[] {
  return [readFileTool, listFilesTool, searchFilesTool, runCommandTool({ ...options.runCommand, readOnly: true })];
}
