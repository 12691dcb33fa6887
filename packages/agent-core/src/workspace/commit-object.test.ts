import { execFileSync } from "node:child_process";
import { mkdtemp, readdir, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { commitWriter } from "./commit-object.js";
import { countGitCommands, withGitTrace } from "./git-trace.js";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "./test-repo.js";

// Fixed times, so a commit git writes for the same tree, parents and message has the same id.
const DATES = { GIT_AUTHOR_DATE: "1796300000 +0100", GIT_COMMITTER_DATE: "1796300000 +0100" };

function git(dir: string, args: string[], input?: string): string {
  return execFileSync("git", args, { cwd: dir, encoding: "utf8", env: { ...process.env, ...TEST_GIT_IDENTITY, ...DATES }, ...(input !== undefined ? { input } : {}) }).replace(/\n$/, "");
}

/** Three children of `dir`'s HEAD, each committing a file of its own, merged together with mergeMany. */
async function mergeThree(dir: string, message = (name: string) => `Merge ${name}`) {
  const ws = await LocalWorkspace.open(dir, { sandbox: false });
  const names = ["summon-A", "summon-B", "summon-C"];
  for (const name of names) {
    const child = await ws.fork(name);
    await child.writeFile(`parts/${name}.ts`, `export const part = "${name}";\n`);
    await child.commit(`Write ${name}`);
    await child.dispose();
  }
  const before = git(dir, ["rev-parse", "HEAD"]);
  const { value: merged, events } = await withGitTrace(() => ws.mergeMany(names.map((branch) => ({ branch, message: message(branch) }))));
  return { ws, before, merged, names, commitTrees: countGitCommands(events)["commit-tree"] ?? 0 };
}

/**
 * The id `git commit-tree` gives the commit `sha` is said to be: its tree, parents, author,
 * committer (names, emails, times) and message, written again by git.
 */
function writtenByGit(dir: string, sha: string): string {
  const text = git(dir, ["cat-file", "commit", sha]);
  const split = text.indexOf("\n\n");
  const headers = text.slice(0, split);
  const tree = /^tree (\S+)$/m.exec(headers)![1]!;
  const parents = [...headers.matchAll(/^parent (\S+)$/gm)].map((match) => match[1]!);
  const person = (role: string) => /^(?:author|committer) (.*) <(.*)> (\d+ [+-]\d{4})$/m.exec(headers.split("\n").find((line) => line.startsWith(`${role} `))!)!;
  const [, authorName, authorEmail, authorDate] = person("author");
  const [, committerName, committerEmail, committerDate] = person("committer");
  return execFileSync("git", ["commit-tree", tree, ...parents.flatMap((parent) => ["-p", parent]), "-F", "-"], {
    cwd: dir,
    encoding: "utf8",
    input: `${text.slice(split + 2)}\n`,
    env: {
      ...process.env,
      GIT_AUTHOR_NAME: authorName!,
      GIT_AUTHOR_EMAIL: authorEmail!,
      GIT_AUTHOR_DATE: authorDate!,
      GIT_COMMITTER_NAME: committerName!,
      GIT_COMMITTER_EMAIL: committerEmail!,
      GIT_COMMITTER_DATE: committerDate!,
    },
  }).trim();
}

describe("merge commits written without commit-tree", () => {
  const saved: Record<string, string | undefined> = {};
  beforeEach(() => {
    for (const [name, value] of Object.entries(DATES)) {
      saved[name] = process.env[name];
      process.env[name] = value;
    }
  });
  afterEach(() => {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  });

  it("are the very objects git commit-tree writes, loose and read-only, with nothing left beside them", async () => {
    const dir = await createTestRepo({ "README.md": "# r\n" });
    const { before, merged, names, commitTrees } = await mergeThree(dir, (name) => `Merge ${name}\n\nWith a body, trailing spaces   \nand ünïcode ✓`);
    expect(merged.map((entry) => entry.branch)).toEqual(names);
    // No git process per merge commit.
    expect(commitTrees).toBe(0);
    expect(git(dir, ["rev-parse", "HEAD"])).toBe(merged.at(-1)!.sha);
    let parent = before;
    for (const { branch, sha } of merged) {
      // git's own bytes for the same commit have the same id.
      expect(writtenByGit(dir, sha)).toBe(sha);
      expect(git(dir, ["rev-list", "--parents", "-n", "1", sha]).split(" ")).toEqual([sha, parent, git(dir, ["rev-parse", branch])]);
      const file = join(dir, ".git", "objects", sha.slice(0, 2), sha.slice(2));
      expect((await stat(file)).mode & 0o777).toBe(0o444);
      expect((await readdir(join(dir, ".git", "objects", sha.slice(0, 2)))).filter((name) => name.startsWith("tmp_obj_"))).toEqual([]);
      parent = sha;
    }
    expect(git(dir, ["log", "-1", "--format=%B", merged[0]!.sha])).toContain("and ünïcode ✓");
    // The repository is sound: every object readable, every commit well formed.
    expect(() => git(dir, ["fsck", "--strict", "--no-dangling"])).not.toThrow();
  });

  it("in a SHA-256 repository, with SHA-256 ids", async () => {
    const dir = await mkdtemp(join(tmpdir(), "keen-sha256-"));
    git(dir, ["init", "-q", "-b", "main", "--object-format=sha256"]);
    git(dir, ["commit", "-q", "--allow-empty", "-m", "initial"]);
    const { merged, commitTrees } = await mergeThree(dir);
    expect(commitTrees).toBe(0);
    for (const { sha } of merged) {
      expect(sha).toMatch(/^[0-9a-f]{64}$/);
      expect(writtenByGit(dir, sha)).toBe(sha);
    }
    expect(() => git(dir, ["fsck", "--strict", "--no-dangling"])).not.toThrow();
  });

  it("are left to commit-tree where the repository sets another encoding, which commit-tree writes into each commit", async () => {
    const dir = await createTestRepo({ "README.md": "# r\n" });
    git(dir, ["config", "i18n.commitEncoding", "ISO-8859-1"]);
    const { merged, commitTrees } = await mergeThree(dir);
    expect(commitTrees).toBe(3);
    for (const { sha } of merged) {
      expect(git(dir, ["cat-file", "commit", sha])).toMatch(/^encoding ISO-8859-1$/m);
      expect(writtenByGit(dir, sha)).toBe(sha);
    }
  });

  it("are left to commit-tree where git's identity is not whole: an empty configured name stops the merge, as it did, with nothing moved", async () => {
    const dir = await createTestRepo({ "README.md": "# r\n" });
    const forker = await LocalWorkspace.open(dir, { sandbox: false });
    for (const name of ["summon-A", "summon-B"]) {
      const child = await forker.fork(name);
      await child.writeFile(`${name}.ts`, "export {};\n");
      await child.commit(`Write ${name}`);
      await child.dispose();
    }
    git(dir, ["config", "user.name", ""]);
    git(dir, ["config", "user.email", "someone@example.com"]);
    const before = git(dir, ["rev-parse", "HEAD"]);
    // A workspace opened now reads the configured (empty) name as git's identity.
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const saved = { name: process.env.GIT_AUTHOR_NAME, committer: process.env.GIT_COMMITTER_NAME };
    delete process.env.GIT_AUTHOR_NAME;
    delete process.env.GIT_COMMITTER_NAME;
    try {
      await expect(ws.mergeMany([{ branch: "summon-A", message: "Merge A" }, { branch: "summon-B", message: "Merge B" }])).rejects.toThrow(/empty ident name/);
    } finally {
      if (saved.name !== undefined) process.env.GIT_AUTHOR_NAME = saved.name;
      if (saved.committer !== undefined) process.env.GIT_COMMITTER_NAME = saved.committer;
    }
    expect(git(dir, ["rev-parse", "HEAD"])).toBe(before);
    expect(git(dir, ["status", "--porcelain"])).toBe("");
  });

  it("write a commit already in the repository (the same batch made again after a kill) as one object, kept as it was", async () => {
    const dir = await createTestRepo({ "README.md": "# r\n" });
    const head = git(dir, ["rev-parse", "HEAD"]);
    const tree = git(dir, ["rev-parse", "HEAD^{tree}"]);
    const write = await commitWriter({ gitDir: join(dir, ".git"), workTree: dir }, join(dir, ".git"), TEST_GIT_IDENTITY, head.length);
    expect(write).toBeDefined();
    const first = await write!(tree, [head], "Again\n");
    const file = join(dir, ".git", "objects", first.slice(0, 2), first.slice(2));
    const before = await stat(file);
    expect(await write!(tree, [head], "Again\n")).toBe(first);
    const after = await stat(file);
    expect([after.ino, after.mtimeMs]).toEqual([before.ino, before.mtimeMs]);
    expect(await readdir(join(dir, ".git", "objects", first.slice(0, 2)))).toEqual([first.slice(2)]);
    expect(writtenByGit(dir, first)).toBe(first);
    // What commit-tree could not have been given is refused, and nothing is written.
    await expect(write!(tree, [head], "a NUL \0 here\n")).rejects.toMatchObject({ code: "git_failed" });
    await expect(write!("not-an-id", [head], "x\n")).rejects.toMatchObject({ code: "git_failed" });
    await expect(write!(tree, [head.slice(0, 20)], "x\n")).rejects.toMatchObject({ code: "git_failed" });
  });
});
