export type * from "./workspace.js";
export { isCheckpointable, isForkable } from "./workspace.js";
export { LocalWorkspace, type LocalWorkspaceOptions } from "./local-workspace.js";
export { localCommandRunner, runInProcessGroup, type CommandRunner, type CommandRunOptions } from "./command-runner.js";
export {
  sandboxRunner,
  isSandboxAvailable,
  assertSandboxAvailable,
  SandboxUnavailableError,
  SANDBOX_HOME,
  type SandboxOptions,
} from "./sandbox-runner.js";
export type { RecoveryReport } from "./worktree-recovery.js";
