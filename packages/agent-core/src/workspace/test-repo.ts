import { readdirSync, readFileSync } from "node:fs";
import { mkdtemp, mkdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { execa } from "execa";

/** Identity for commits made by test fixtures, so tests never depend on the machine's git config. */
export const TEST_GIT_IDENTITY = {
  GIT_AUTHOR_NAME: "keen test",
  GIT_AUTHOR_EMAIL: "test@keen.localhost",
  GIT_COMMITTER_NAME: "keen test",
  GIT_COMMITTER_EMAIL: "test@keen.localhost",
};

/** Creates a real git repository in a temporary folder with `files` committed on `main`. */
export async function createTestRepo(files: Record<string, string> = { "README.md": "# test\n" }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "keen-repo-"));
  await execa("git", ["init", "-q", "-b", "main"], { cwd: dir });
  for (const [path, content] of Object.entries(files)) {
    await mkdir(dirname(join(dir, path)), { recursive: true });
    await writeFile(join(dir, path), content);
  }
  await execa("git", ["add", "-A"], { cwd: dir });
  await execa("git", ["commit", "-q", "-m", "initial"], { cwd: dir, env: TEST_GIT_IDENTITY });
  return dir;
}

/**
 * Host process ids whose command line has `argument` as one of its arguments. Tests find a
 * command's processes this way because a sandboxed command sees its own pid namespace.
 */
export function hostPidsRunning(argument: string): number[] {
  const pids: number[] = [];
  for (const pid of readdirSync("/proc").filter((name) => /^\d+$/.test(name))) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").includes(argument)) pids.push(Number(pid));
    } catch {
      // Exited while we looked.
    }
  }
  return pids;
}
