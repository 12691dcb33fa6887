export type * from "./workspace.js";
export { isForkable } from "./workspace.js";
export { LocalWorkspace, type LocalWorkspaceOptions } from "./local-workspace.js";
export { localCommandRunner, runInProcessGroup, type CommandRunner, type CommandRunOptions } from "./command-runner.js";
