/**
 * Forks worktrees and then waits, for tests that kill it: `node --import tsx hold-worktrees.ts <json config>`.
 * Writes uncommitted work into the first worktree, prints `ready` and stays alive until killed.
 * With `holdRepoLock`, it also takes the repository lock and keeps it.
 */
import { execFileSync } from "node:child_process";
import { realpathSync } from "node:fs";
import { LocalWorkspace } from "../local-workspace.js";
import { withRepoLock } from "../repo-lock.js";

interface Config {
  repo: string;
  branches: string[];
  holdRepoLock?: boolean;
}

const config = JSON.parse(process.argv[2]!) as Config;
const workspace = await LocalWorkspace.open(config.repo, { sandbox: false });
const forks = [];
for (const branch of config.branches) forks.push(await workspace.fork(branch));
await forks[0]?.writeFile("wip.txt", "work in progress\n");
if (config.holdRepoLock) {
  const commonDir = realpathSync(execFileSync("git", ["rev-parse", "--path-format=absolute", "--git-common-dir"], { cwd: config.repo, encoding: "utf8" }).trim());
  await new Promise<void>((locked) => {
    void withRepoLock(commonDir, () => {
      locked();
      return new Promise(() => {});
    });
  });
}
process.stdout.write("ready\n");
setInterval(() => {}, 60_000);
