import { lstat, mkdir, readdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import type { ArchiveReport } from "@keen/gateway-kit";
import { execa } from "execa";
import { ServerError } from "../errors.js";
import { SAFE_GIT } from "../runs/provision.js";

/** Where a user's uploads live: `<workspaces>/<user>/uploads/<upload>/`. */
export function uploadFolder(workspacesDir: string, userId: string, uploadId: string): string {
  for (const id of [userId, uploadId]) {
    if (!/^[A-Za-z0-9_-]{1,100}$/.test(id)) throw new ServerError("invalid_request", "ids must be plain path segments");
  }
  return join(workspacesDir, userId, "uploads", uploadId);
}

/** Git with no system or user config and nothing from the uploaded tree steering it. */
function git(cwd: string, home: string, args: string[]) {
  return execa("git", [...SAFE_GIT, "-c", "user.name=keen", "-c", "user.email=uploads@keen.invalid", "-c", "commit.gpgSign=false", ...args], {
    cwd,
    reject: false,
    stdin: "ignore",
    timeout: 5 * 60_000,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: home, GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null", GIT_TERMINAL_PROMPT: "0", GIT_DIR: join(cwd, ".git"), GIT_WORK_TREE: cwd },
    extendEnv: false,
  });
}

/**
 * Removes every entry named `.git` (any case, file or folder, at any depth) without following
 * links: an uploaded repository's config, hooks, alternates and `gitdir:` pointers never reach
 * a git the server runs.
 */
async function dropGitMetadata(dir: string): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.name.toLowerCase() === ".git") await rm(path, { recursive: true, force: true });
    else if (entry.isDirectory() && !entry.isSymbolicLink()) await dropGitMetadata(path);
  }
}

/**
 * Unpacks screened archive bytes into `target` as a fresh repository with one commit of the
 * uploaded files, and returns that commit. Only bytes that passed `screenArchive` come here; the
 * system tar/unzip write them into an empty staging folder (owners and modes of the archive not
 * applied), then any `.git` of the upload is dropped before git runs. Its history is therefore
 * not imported: its objects, config and hooks are untrusted.
 */
export async function unpackUpload(body: Buffer, report: ArchiveReport, target: string): Promise<string> {
  const staging = `${target}.partial`;
  const home = `${target}.home`;
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true });
  await mkdir(home, { recursive: true });
  try {
    const env = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: home, LC_ALL: "C" };
    if (report.format === "zip") {
      const archive = join(home, "upload.zip");
      const { writeFile } = await import("node:fs/promises");
      await writeFile(archive, body);
      // -n: never overwrite, -q quiet; unzip cannot read from a pipe.
      const result = await execa("unzip", ["-n", "-q", "--", archive, "-d", staging], { reject: false, env, extendEnv: false, stdin: "ignore" });
      if (result.exitCode !== 0 && result.exitCode !== 1) throw new ServerError("invalid_request", "The archive could not be unpacked");
    } else {
      const args = ["-x", "--no-same-owner", "--no-same-permissions", "--keep-old-files", "--no-acls", "--no-xattrs", "--no-selinux", "-C", staging, "-f", "-"];
      if (report.format === "tar.gz") args.unshift("-z");
      const result = await execa("tar", args, { input: body, reject: false, env, extendEnv: false });
      if (result.exitCode !== 0) throw new ServerError("invalid_request", "The archive could not be unpacked");
    }
    await dropGitMetadata(staging);
    const steps = [["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "--no-verify", "--allow-empty", "-m", "Upload"]];
    for (const step of steps) {
      const result = await git(staging, home, step);
      if (result.exitCode !== 0) throw new ServerError("invalid_request", `The upload could not be made a repository: ${String(result.stderr).split("\n")[0]}`);
    }
    const head = await git(staging, home, ["rev-parse", "HEAD"]);
    await rm(target, { recursive: true, force: true });
    await rename(staging, target);
    return head.stdout.trim();
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    throw error;
  } finally {
    await rm(home, { recursive: true, force: true });
  }
}

/** Whether a folder exists (not following a link at its own path). */
export async function folderExists(path: string): Promise<boolean> {
  return lstat(path).then(
    (s) => s.isDirectory(),
    () => false,
  );
}
