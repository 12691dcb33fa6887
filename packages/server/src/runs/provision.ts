import { spawn } from "node:child_process";
import { lookup } from "node:dns/promises";
import { mkdir, rm, stat } from "node:fs/promises";
import { BlockList, isIP } from "node:net";
import { join, relative, resolve, sep } from "node:path";
import { Readable } from "node:stream";
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
 * Addresses a run's repository URL may not lead to: the server's own machine, its networks and
 * the cloud metadata service are no business of a tenant's. IPv4-mapped IPv6 addresses are
 * checked by their IPv4 form (`BlockList` does that), NAT64 ones by the prefix.
 */
const NOT_PUBLIC = (() => {
  const list = new BlockList();
  const v4: Array<[string, number]> = [
    ["0.0.0.0", 8], ["10.0.0.0", 8], ["100.64.0.0", 10], ["127.0.0.0", 8], ["169.254.0.0", 16], ["172.16.0.0", 12],
    ["192.0.0.0", 24], ["192.0.2.0", 24], ["192.88.99.0", 24], ["192.168.0.0", 16], ["198.18.0.0", 15], ["198.51.100.0", 24],
    ["203.0.113.0", 24], ["224.0.0.0", 4], ["240.0.0.0", 4],
  ];
  for (const [net, prefix] of v4) list.addSubnet(net, prefix, "ipv4");
  const v6: Array<[string, number]> = [
    ["::", 96], ["64:ff9b::", 96], ["64:ff9b:1::", 48], ["100::", 64], ["2001:db8::", 32], ["2002::", 16], ["fc00::", 7], ["fe80::", 10], ["fec0::", 10], ["ff00::", 8],
  ];
  for (const [net, prefix] of v6) list.addSubnet(net, prefix, "ipv6");
  return list;
})();

function isPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0) return false;
  return !NOT_PUBLIC.check(address, family === 4 ? "ipv4" : "ipv6");
}

/**
 * Resolves a repository URL's host once, refuses it unless every address is public, and returns
 * git options that pin curl to exactly those addresses (a second lookup cannot rebind the name to
 * a private one) and forbid redirects (a public host cannot send git on to a private one). The
 * URL git gets is the one parsed here, so git and this check never read the host differently.
 */
async function publicHostOptions(raw: string): Promise<{ url: string; options: string[] }> {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ServerError("repository_unavailable", "Could not clone the repository: not a valid URL");
  }
  const host = url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
  let addresses: string[];
  try {
    addresses = isIP(host) ? [host] : (await lookup(host, { all: true, verbatim: true })).map((entry) => entry.address);
  } catch {
    throw new ServerError("repository_unavailable", `Could not clone the repository: could not resolve host ${url.hostname}`);
  }
  if (addresses.length === 0 || !addresses.every(isPublicAddress)) {
    throw new ServerError("repository_unavailable", `Could not clone the repository: ${url.hostname} has a loopback, private or reserved address`);
  }
  const options = ["-c", "http.followRedirects=false"];
  // An address literal is never looked up again; a name is pinned to the addresses checked here.
  if (!isIP(host)) {
    const port = url.port || (url.protocol === "https:" ? "443" : "80");
    const pinned = addresses.map((address) => (isIP(address) === 6 ? `[${address}]` : address)).join(",");
    options.push("-c", `http.curloptResolve=${url.hostname}:${port}:${pinned}`);
  }
  return { url: url.href, options };
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
  const remote = "url" in repo ? await publicHostOptions(repo.url).catch(async (error: unknown) => {
    await rm(folders.root, { recursive: true, force: true });
    throw error;
  }) : undefined;
  const source = remote ? remote.url : (repo as { path: string }).path;
  const protocols = remote ? ["-c", "protocol.allow=never", "-c", "protocol.http.allow=always", "-c", "protocol.https.allow=always", ...remote.options] : ["-c", "protocol.allow=never", "-c", "protocol.file.allow=always"];
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

/**
 * The unified diff between two commits of a checkout, with no external diff drivers or text
 * filters, streamed from git as the reader takes it (see `gitStream`).
 */
export async function diffStream(checkout: string, from: string, to: string, options: DownloadOptions = {}): Promise<Readable> {
  for (const sha of [from, to]) if (!/^[0-9a-f]{40,64}$/.test(sha)) throw new ServerError("invalid_request", "not a commit id");
  // An empty diff is a diff: no output is an answer of its own, not a failure.
  return gitStream(checkout, ["diff", "--no-ext-diff", "--no-textconv", "--no-color", from, to, "--"], { ...options, allowEmpty: true });
}

/** The commit `branch` of the checkout points at (a run's result is on its run branch). */
export async function branchCommit(checkout: string, branch: string): Promise<string> {
  if (branch !== "HEAD" && !/^(?!-)[A-Za-z0-9._\/-]{1,200}$/.test(branch)) throw new ServerError("repository_unavailable", "The run's branch has an unusable name");
  const tip = await execa("git", [...SAFE_GIT, "rev-parse", "--verify", "--end-of-options", `${branch}^{commit}`], checkoutGit(checkout));
  if (tip.exitCode !== 0) throw new ServerError("repository_unavailable", "The run's branch is not in its workspace");
  return tip.stdout.trim();
}

/**
 * A git bundle of `branch` as a stream (see `gitStream`), once its tip is checked to be `head`
 * (the run's recorded result); the checkout is only read. git writes the bundle to a pipe
 * (`bundle create -`), never to a temporary file.
 */
export async function bundleStream(checkout: string, branch: string, head: string, options: DownloadOptions = {}): Promise<Readable> {
  if (!/^[0-9a-f]{40,64}$/.test(head)) throw new ServerError("invalid_request", "not a commit id");
  if ((await branchCommit(checkout, branch)) !== head) throw new ServerError("repository_unavailable", "The run's workspace no longer holds its result");
  return gitStream(checkout, ["bundle", "create", "--quiet", "-", branch], options);
}

export interface DownloadOptions {
  /**
   * Ends the download (and git) when its reader has taken no bytes for this long while git had
   * some ready: a client that stops reading must not hold a git process. Time git spends
   * producing bytes does not count. Default: no limit.
   */
  stallMs?: number;
}

/**
 * Runs one of the server's git calls on a checkout with its output as a stream: what the server
 * holds stays bounded by the pipe and the reader's backpressure, whatever the repository's size,
 * and nothing is written to disk. Resolves once git produced its first bytes (or ended, with
 * `allowEmpty`), so a git that fails at once is a `repository_unavailable` answer rather than a
 * cut-off download; a failure later errors the stream. Destroying the stream (a client that went
 * away) kills git's whole process group, children included (`bundle create` runs `pack-objects`).
 */
async function gitStream(checkout: string, args: string[], options: DownloadOptions & { allowEmpty?: boolean } = {}): Promise<Readable> {
  const unavailable = () => new ServerError("repository_unavailable", "The run's workspace is no longer available");
  const { cwd, env } = checkoutGit(checkout);
  const git = spawn("git", [...SAFE_GIT, ...args], { cwd, env, stdio: ["ignore", "pipe", "ignore"], detached: true });
  let running = true;
  const exited = new Promise<number | null>((resolve) => {
    git.once("error", () => resolve(null));
    git.once("close", (code) => resolve(code));
  }).finally(() => (running = false));
  const kill = () => {
    if (!running || git.pid === undefined) return;
    try {
      process.kill(-git.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  };
  async function* bytes(): AsyncGenerator<Buffer> {
    for await (const chunk of git.stdout) yield chunk as Buffer;
    if ((await exited) !== 0) throw unavailable();
  }
  const chunks = bytes();
  let first: IteratorResult<Buffer>;
  try {
    first = await chunks.next();
  } catch (error) {
    kill();
    throw error;
  }
  if (first.done && !options.allowEmpty) throw unavailable();
  const head = first.done ? [] : [first.value];
  // When the reader last left bytes untaken: set while a chunk waits for it, cleared once taken.
  let waitingSince: number | undefined;
  const stream = Readable.from(
    (async function* () {
      for (const source of [head, chunks]) {
        for await (const chunk of source) {
          waitingSince = Date.now();
          yield chunk;
          waitingSince = undefined;
        }
      }
    })(),
    { objectMode: false },
  );
  const stallMs = options.stallMs;
  const watch =
    stallMs === undefined
      ? undefined
      : setInterval(() => {
          if (waitingSince !== undefined && Date.now() - waitingSince > stallMs) stream.destroy(new ServerError("unavailable", "The download stalled: its reader took no bytes"));
        }, Math.max(50, Math.min(1_000, stallMs / 4)));
  watch?.unref();
  stream.once("close", () => {
    if (watch) clearInterval(watch);
    kill();
  });
  return stream;
}
