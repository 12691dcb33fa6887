import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import { gitRaw } from "./git.js";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "./test-repo.js";

const gitIn = async (dir: string, ...args: string[]) => (await execa("git", args, { cwd: dir, env: TEST_GIT_IDENTITY })).stdout;

/** A repository with a submodule `sub`: commit `first` has it at one commit of the library, `second` (main) at another. */
async function repoWithSubmodule(): Promise<{ dir: string; first: string; second: string }> {
  const lib = await createTestRepo({ "lib.txt": "one\n" });
  await writeFile(join(lib, "lib.txt"), "two\n");
  await gitIn(lib, "commit", "-qam", "two");
  const dir = await createTestRepo({ "README.md": "# app\n" });
  await gitIn(dir, "-c", "protocol.file.allow=always", "submodule", "add", "-q", lib, "sub");
  await gitIn(join(dir, "sub"), "checkout", "-q", "HEAD~1");
  await gitIn(dir, "add", "sub");
  await gitIn(dir, "commit", "-qm", "sub at one");
  const first = await gitIn(dir, "rev-parse", "HEAD");
  await gitIn(join(dir, "sub"), "checkout", "-q", "main");
  await gitIn(dir, "add", "sub");
  await gitIn(dir, "commit", "-qm", "sub at two");
  return { dir, first, second: await gitIn(dir, "rev-parse", "HEAD") };
}

/**
 * What a sandboxed agent can do at a submodule's path of its worktree: make a repository of its
 * own there, with the submodule's history (read from the common dir) and a smudge filter that
 * runs `touch proof` for every file git writes.
 */
function nestedRepositoryAttack(commonDir: string, proof: string): string {
  return [
    "set -e",
    "git init -q sub",
    `cp -R '${join(commonDir, "modules", "sub", "objects")}/.' sub/.git/objects/`,
    "git -C sub checkout -q \"$(git ls-tree HEAD sub | cut -f1 | cut -d' ' -f3)\"",
    `git -C sub config filter.evil.smudge 'touch ${proof}; cat'`,
    `git -C sub config filter.evil.clean 'touch ${proof}; cat'`,
    "echo '* filter=evil' > sub/.git/info/attributes",
    "touch -d 2001-01-01 sub/lib.txt",
  ].join("\n");
}

describe("a repository the agent makes inside its worktree", () => {
  const saved = process.env.GIT_CONFIG_GLOBAL;
  afterEach(() => {
    if (saved === undefined) delete process.env.GIT_CONFIG_GLOBAL;
    else process.env.GIT_CONFIG_GLOBAL = saved;
  });

  it("is never entered by keen's git, even when the user's config says submodule.recurse = true", async () => {
    const { dir, first } = await repoWithSubmodule();
    const proofDir = await mkdtemp(join(tmpdir(), "keen-proof-"));
    const proof = join(proofDir, "filter-ran");
    const ws = await LocalWorkspace.open(dir);
    const child = await ws.fork("keen/nested0001");
    const attack = await child.exec(nestedRepositoryAttack(ws.gitCommonDir, proof));
    expect(attack.exitCode, attack.output).toBe(0);
    // Plain git on the host would now run the agent's filter: the attack is real.
    const plain = await execa("git", ["-C", join(child.root, "sub"), "status", "--porcelain"], { reject: false });
    expect(plain.exitCode).toBe(0);
    expect(existsSync(proof)).toBe(true);
    await rm(proof);
    // Stale stat data again (plain git's status refreshed it), so a look inside would rehash through the filter.
    await execa("touch", ["-d", "2001-01-01", join(child.root, "sub", "lib.txt")]);

    await child.writeFile("work.txt", "work\n");
    const { sha } = await child.commit("work");
    expect(sha).toMatch(/^[0-9a-f]{40}$/);
    expect(existsSync(proof), "commit").toBe(false);
    // A diff of the work tree (none of keen's calls needs one today) does not look inside either.
    const target = { gitDir: join(ws.gitCommonDir, "worktrees", "nested0001"), workTree: child.root };
    expect((await gitRaw(target, ["diff"])).exitCode).toBe(0);
    expect(existsSync(proof), "diff").toBe(false);

    // The user's own global config, as many set it; then a reset that moves the submodule's
    // commit: with recursion git would check it out in the agent's repository.
    const global = join(proofDir, "gitconfig");
    await writeFile(global, "[submodule]\n\trecurse = true\n");
    process.env.GIT_CONFIG_GLOBAL = global;
    await child.resetTo(first);
    expect(await gitIn(child.root, "rev-parse", "HEAD")).toBe(first);
    expect(existsSync(proof), "reset").toBe(false);
    // And a fork still checks out (recursion would fail on the submodule git never cloned for it).
    const other = await ws.fork("keen/nested0002");
    expect(await other.readFile("README.md")).toBe("# app\n");
  });

  it("with reuseWorktrees, what an agent leaves in a submodule's folder never reaches the next fork", async () => {
    const { dir } = await repoWithSubmodule();
    const ws = await LocalWorkspace.open(dir, { reuseWorktrees: true });
    const first = await ws.fork("keen/nested0003");
    // git clean does not go into a submodule's folder: whatever is there would be kept.
    const planted = await first.exec("git init -q sub && echo from-first > sub/planted.txt && echo planted");
    expect(planted.output).toContain("planted");
    await first.writeFile("work.txt", "work\n");
    await first.commit("work");
    await first.dispose();
    const next = await ws.fork("keen/nested0004");
    expect(existsSync(join(next.root, "sub", "planted.txt"))).toBe(false);
    expect(existsSync(join(next.root, "sub", ".git"))).toBe(false);
    expect((await next.exec("ls -A sub")).output).toBe("");
    await next.dispose();
    await ws.releaseWorktrees();
  });
});
