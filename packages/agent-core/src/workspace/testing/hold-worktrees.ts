/**
 * Forks worktrees and then waits, for tests that kill it: `node --import tsx hold-worktrees.ts <json config>`.
 * Writes uncommitted work into the first worktree, prints `ready` and stays alive until killed.
 */
import { LocalWorkspace } from "../local-workspace.js";

interface Config {
  repo: string;
  branches: string[];
}

const config = JSON.parse(process.argv[2]!) as Config;
const workspace = await LocalWorkspace.open(config.repo, { sandbox: false });
const forks = [];
for (const branch of config.branches) forks.push(await workspace.fork(branch));
await forks[0]?.writeFile("wip.txt", "work in progress\n");
process.stdout.write("ready\n");
setInterval(() => {}, 60_000);
