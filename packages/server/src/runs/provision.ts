import { mkdir, rm, stat } from "node:fs/promises";
import { join, relative, resolve, sep } from "node:path";
import { execa } from "execa";
import { ServerError } from "../errors.js";

/** Git with hooks, fsmonitor and external diff drivers off: nothing in the repository steers it. */
export const SAFE_GIT = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "protocol.ext.allow=never"];

export interface RunFolders {
  root: string;
  checkout: string;
  worktrees: string;
}

/**
 * `<workspaces>/<user>/<run>/`: the run's checkout and its child worktrees. Ids are checked to
 * be one plain path segment each, and the result to stay under the root.
 */
export function runFolders(workspacesDir: string, userId: string, runId: string): RunFolders {
  for (const id of [userId, runId]) {
    if (!/^[A-Za-z0-9_-]{1,100}$/.test(id)) throw new ServerError("invalid_request", "ids must be plain path segments");
  }
  const root = resolve(workspacesDir, userId, runId);
  const rel = relative(resolve(workspacesDir), root);
  if (rel.startsWith("..") || rel.startsWith(sep)) throw new ServerError("invalid_request", "workspace escapes its root");
  return { root, checkout: join(root, "checkout"), worktrees: join(root, "worktrees") };
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/**
 * Clones the run's repository into its checkout (never touching the source) and returns the
 * commit it starts from. A checkout left by an earlier attempt is reused when `reuse` is set
 * (resume), otherwise replaced.
 */
export async function provisionCheckout(
  folders: RunFolders,
  repo: { url: string; ref?: string } | { path: string },
  reuse: boolean,
): Promise<{ baseCommit: string; branch: string }> {
  if (reuse && (await exists(join(folders.checkout, ".git")))) return describeHead(folders.checkout);
  await rm(folders.root, { recursive: true, force: true });
  await mkdir(folders.root, { recursive: true });
  const source = "url" in repo ? repo.url : repo.path;
  const protocols = "url" in repo ? ["-c", "protocol.allow=never", "-c", "protocol.http.allow=always", "-c", "protocol.https.allow=always"] : ["-c", "protocol.allow=never", "-c", "protocol.file.allow=always"];
  const args = [...SAFE_GIT, ...protocols, "clone", "--no-local", "--no-recurse-submodules"];
  if ("url" in repo && repo.ref) args.push("--branch", repo.ref);
  args.push("--", source, folders.checkout);
  const result = await execa("git", args, {
    reject: false,
    timeout: 10 * 60_000,
    // No prompts, and neither the system's nor the server user's git config (credential helpers).
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: folders.root, GIT_TERMINAL_PROMPT: "0", GIT_CONFIG_NOSYSTEM: "1" },
    extendEnv: false,
    stdin: "ignore",
  });
  if (result.exitCode !== 0) {
    await rm(folders.root, { recursive: true, force: true });
    const reason = String(result.stderr).split("\n").find((l) => l.startsWith("fatal:")) ?? "git clone failed";
    throw new ServerError("repository_unavailable", `Could not clone the repository: ${reason.replace(/^fatal:\s*/, "")}`);
  }
  return describeHead(folders.checkout);
}

/**
 * How the server's own git calls on a run's checkout run: its repository named explicitly
 * (`GIT_DIR`, never found by walking up or steered by the server's environment), no system or
 * user config, no prompts.
 */
function checkoutGit(checkout: string) {
  return {
    cwd: checkout,
    reject: false,
    stdin: "ignore",
    extendEnv: false,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: checkout, GIT_DIR: join(checkout, ".git"), GIT_WORK_TREE: checkout, GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null", GIT_TERMINAL_PROMPT: "0" },
  } as const;
}

async function describeHead(checkout: string): Promise<{ baseCommit: string; branch: string }> {
  const head = await execa("git", [...SAFE_GIT, "rev-parse", "HEAD"], checkoutGit(checkout));
  if (head.exitCode !== 0) throw new ServerError("repository_unavailable", "The repository has no commits");
  const branch = await execa("git", [...SAFE_GIT, "rev-parse", "--abbrev-ref", "HEAD"], checkoutGit(checkout));
  return { baseCommit: head.stdout.trim(), branch: branch.stdout.trim() };
}

/** The unified diff between two commits of a checkout, with no external diff drivers or text filters. */
export async function diffCommits(checkout: string, from: string, to: string): Promise<string> {
  for (const sha of [from, to]) if (!/^[0-9a-f]{40,64}$/.test(sha)) throw new ServerError("invalid_request", "not a commit id");
  const result = await execa("git", [...SAFE_GIT, "diff", "--no-ext-diff", "--no-textconv", "--no-color", from, to, "--"], {
    ...checkoutGit(checkout),
    maxBuffer: 50 * 1024 * 1024,
  });
  if (result.exitCode !== 0) throw new ServerError("repository_unavailable", "The run's workspace is no longer available");
  return result.stdout;
}

/** The commit `branch` of the checkout points at (a run's result is on its run branch). */
export async function branchCommit(checkout: string, branch: string): Promise<string> {
  if (branch !== "HEAD" && !/^(?!-)[A-Za-z0-9._\/-]{1,200}$/.test(branch)) throw new ServerError("repository_unavailable", "The run's branch has an unusable name");
  const tip = await execa("git", [...SAFE_GIT, "rev-parse", "--verify", "--end-of-options", `${branch}^{commit}`], checkoutGit(checkout));
  if (tip.exitCode !== 0) throw new ServerError("repository_unavailable", "The run's branch is not in its workspace");
  return tip.stdout.trim();
}

/**
 * Writes a git bundle of `branch` from the checkout to `file` and checks that the bundle's tip is
 * `head` (the run's recorded result); the checkout is only read.
 */
export async function bundleBranch(checkout: string, branch: string, head: string, file: string): Promise<void> {
  if (!/^[0-9a-f]{40,64}$/.test(head)) throw new ServerError("invalid_request", "not a commit id");
  if (branch !== "HEAD" && !/^(?!-)[A-Za-z0-9._\/-]{1,200}$/.test(branch)) throw new ServerError("repository_unavailable", "The run's branch has an unusable name");
  const options = checkoutGit(checkout);
  const tip = await execa("git", [...SAFE_GIT, "rev-parse", "--verify", "--end-of-options", `${branch}^{commit}`], options);
  if (tip.exitCode !== 0 || tip.stdout.trim() !== head) throw new ServerError("repository_unavailable", "The run's workspace no longer holds its result");
  const bundle = await execa("git", [...SAFE_GIT, "bundle", "create", "--quiet", file, branch], options);
  if (bundle.exitCode !== 0) throw new ServerError("repository_unavailable", "The run's workspace is no longer available");
}
