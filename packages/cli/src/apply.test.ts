import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { applyRunBranch } from "./apply.js";
import { git, gitRepo, identity } from "./testing/keen-process.js";
import { repoState, stateDiff } from "./testing/repo-state.js";

/** A repository on main with a run branch `keen/abc` one commit ahead (it changes `file`). */
async function repoWithRunBranch(file = "result.txt") {
  const dir = await gitRepo({ "README.md": "# sample\n", "notes.txt": "base\n" });
  await execa("git", ["switch", "-q", "-c", "keen/abc"], { cwd: dir });
  await writeFile(join(dir, file), "from the run\n");
  await execa("git", ["add", "-A"], { cwd: dir });
  await execa("git", ["commit", "-qm", "run result"], { cwd: dir, env: identity });
  await execa("git", ["switch", "-q", "main"], { cwd: dir });
  return dir;
}

describe("applyRunBranch (--apply)", () => {
  it("merges the run branch into a clean checkout", async () => {
    const dir = await repoWithRunBranch();
    const outcome = await applyRunBranch(dir, "keen/abc");
    expect(outcome).toMatchObject({ applied: true });
    expect(outcome.message).toMatch(/^applied: merged keen\/abc into main \(fast-forward, now at [0-9a-f]{10}\)$/);
    expect(await readFile(join(dir, "result.txt"), "utf8")).toBe("from the run\n");
    expect(await git(dir, "status", "--porcelain")).toBe("");
  });

  it("leaves a dirty checkout byte-identical and says why and how to take the result", async () => {
    const dir = await repoWithRunBranch();
    await writeFile(join(dir, "README.md"), "# my work in progress\n");
    await writeFile(join(dir, ".env.local"), "API_KEY=secret\n");
    const head = await git(dir, "rev-parse", "HEAD");
    const status = await git(dir, "status", "--porcelain");
    const outcome = await applyRunBranch(dir, "keen/abc");
    expect(outcome.applied).toBe(false);
    expect(outcome.message).toBe(`not applied: ${dir} has uncommitted or untracked files (README.md, .env.local); commit or stash them, then take it with: git -C ${dir} merge keen/abc`);
    expect(await git(dir, "rev-parse", "HEAD")).toBe(head);
    expect(await git(dir, "status", "--porcelain")).toBe(status);
    expect(await readFile(join(dir, "README.md"), "utf8")).toBe("# my work in progress\n");
    expect(await readFile(join(dir, ".env.local"), "utf8")).toBe("API_KEY=secret\n");
  });

  it("aborts a conflicting merge, leaving the checkout as it was", async () => {
    const dir = await repoWithRunBranch("notes.txt");
    await writeFile(join(dir, "notes.txt"), "changed on main\n");
    await execa("git", ["commit", "-qam", "main moved"], { cwd: dir, env: identity });
    const head = await git(dir, "rev-parse", "HEAD");
    const outcome = await applyRunBranch(dir, "keen/abc");
    expect(outcome.applied).toBe(false);
    expect(outcome.message).toMatch(/^not applied: it conflicts with main; nothing was changed\. Review it with git -C \S+ diff main\.\.\.keen\/abc, then take it with: git -C \S+ merge keen\/abc$/);
    expect(await git(dir, "rev-parse", "HEAD")).toBe(head);
    expect(await git(dir, "status", "--porcelain")).toBe("");
    expect(await readFile(join(dir, "notes.txt"), "utf8")).toBe("changed on main\n");
  });

  it("refuses on a detached HEAD and during a merge", async () => {
    const dir = await repoWithRunBranch();
    await execa("git", ["checkout", "-q", "--detach"], { cwd: dir });
    expect((await applyRunBranch(dir, "keen/abc")).message).toMatch(/^not applied: .* has no branch checked out \(detached HEAD\)/);
    await execa("git", ["switch", "-q", "main"], { cwd: dir });
    const gitDir = await git(dir, "rev-parse", "--absolute-git-dir");
    await writeFile(join(gitDir, "MERGE_HEAD"), `${await git(dir, "rev-parse", "keen/abc")}\n`);
    expect((await applyRunBranch(dir, "keen/abc")).message).toMatch(/^not applied: a merge is under way in /);
  });
});

describe("applyRunBranch leaves the checkout alone when it cannot merge cleanly", () => {
  it("refuses a conflict before touching the checkout: index, files and git dir byte-identical, no MERGE_HEAD", async () => {
    const dir = await repoWithRunBranch("notes.txt");
    await writeFile(join(dir, "notes.txt"), "changed on main\n");
    await execa("git", ["commit", "-qam", "main moved"], { cwd: dir, env: identity });
    const before = repoState(dir);
    const outcome = await applyRunBranch(dir, "keen/abc");
    expect(outcome.message).toMatch(/^not applied: it conflicts with main; nothing was changed/);
    expect(stateDiff(before, repoState(dir)).changed).toEqual([]);
  });

  it("never overwrites an ignored file of the checkout that the run branch tracks", async () => {
    const dir = await gitRepo({ "README.md": "# sample\n", ".gitignore": "local.cfg\n" });
    await execa("git", ["switch", "-q", "-c", "keen/abc"], { cwd: dir });
    await writeFile(join(dir, ".gitignore"), "");
    await writeFile(join(dir, "local.cfg"), "from the run\n");
    await execa("git", ["add", "-A"], { cwd: dir });
    await execa("git", ["commit", "-qm", "run result"], { cwd: dir, env: identity });
    await execa("git", ["switch", "-q", "main"], { cwd: dir });
    await writeFile(join(dir, "local.cfg"), "the user's own settings\n");
    const before = repoState(dir);
    const outcome = await applyRunBranch(dir, "keen/abc");
    expect(outcome.applied).toBe(false);
    expect(outcome.message).toMatch(/^not applied: it would overwrite ignored files of main \(local\.cfg\); nothing was changed/);
    expect(await readFile(join(dir, "local.cfg"), "utf8")).toBe("the user's own settings\n");
    expect(stateDiff(before, repoState(dir)).changed).toEqual([]);
  });

  it("refuses a checkout on a branch that does not contain the run's start", async () => {
    const dir = await repoWithRunBranch();
    const base = await git(dir, "rev-parse", "main");
    await execa("git", ["switch", "-q", "--orphan", "other"], { cwd: dir });
    await execa("git", ["commit", "-q", "--allow-empty", "-m", "elsewhere"], { cwd: dir, env: identity });
    const before = repoState(dir);
    const outcome = await applyRunBranch(dir, "keen/abc", base);
    expect(outcome.message).toMatch(/^not applied: other in \S+ does not contain [0-9a-f]{12}, the commit the run started from/);
    expect(stateDiff(before, repoState(dir)).changed).toEqual([]);
    // On main, which moved on since the run started, it merges.
    await execa("git", ["switch", "-q", "main"], { cwd: dir });
    await writeFile(join(dir, "later.txt"), "later\n");
    await execa("git", ["add", "later.txt"], { cwd: dir });
    await execa("git", ["commit", "-qm", "later"], { cwd: dir, env: identity });
    expect((await applyRunBranch(dir, "keen/abc", base)).message).toMatch(/^applied: merged keen\/abc into main \(merge commit/);
  });

  it("merges the run branch, not a tag of the same name", async () => {
    const dir = await repoWithRunBranch();
    await execa("git", ["tag", "keen/abc", "main"], { cwd: dir });
    const outcome = await applyRunBranch(dir, "keen/abc");
    expect(outcome.message).toMatch(/^applied: merged keen\/abc into main \(fast-forward/);
    expect(await git(dir, "rev-parse", "HEAD")).toBe(await git(dir, "rev-parse", "refs/heads/keen/abc"));
    expect(await readFile(join(dir, "result.txt"), "utf8")).toBe("from the run\n");
  });
});
