import { execFileSync } from "node:child_process";
import { existsSync, lstatSync, readFileSync, readlinkSync } from "node:fs";
import { mkdtemp, readFile, symlink, writeFile, mkdir, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "./test-repo.js";

/**
 * Attacks on `LocalWorkspace.mergeMany` (and `merge`, where they share a rule) and on
 * `LocalWorkspace.listCommitFiles`. Each test asserts the safe behaviour.
 */

const author = { author: { name: "A", email: "a@x" } };

function git(dir: string, args: string[], options: { input?: string | Buffer; env?: Record<string, string> } = {}): string {
  return execFileSync("git", args, {
    cwd: dir,
    encoding: "utf8",
    env: { ...process.env, ...TEST_GIT_IDENTITY, ...options.env },
    ...(options.input !== undefined ? { input: options.input } : {}),
    maxBuffer: 64 * 1024 * 1024,
  }).replace(/\n$/, "");
}

type Entry = { content: string | Buffer; mode?: string; sha?: string };

/**
 * Makes `refs/heads/<name>` (or returns the commit only, when name is null) from `from` (or no
 * parent when from is null) plus `files` (null deletes), with git plumbing only: any path bytes.
 */
function makeCommit(dir: string, name: string | null, files: Record<string, string | Buffer | Entry | null> | Array<[Buffer | string, Entry | null]>, from: string | null = "main", message = "c"): string {
  const index = join(dir, ".git", `tmp-index-${Math.random().toString(36).slice(2)}`);
  const env = { GIT_INDEX_FILE: index };
  if (from !== null) git(dir, ["read-tree", from], { env });
  else git(dir, ["read-tree", "--empty"], { env });
  const entries = Array.isArray(files) ? files : Object.entries(files);
  const chunks: Buffer[] = [];
  for (const [path, value] of entries) {
    const raw = Buffer.isBuffer(path) ? path : Buffer.from(path, "utf8");
    if (value === null) {
      chunks.push(Buffer.from("0 0000000000000000000000000000000000000000\t"), raw, Buffer.from([0]));
      continue;
    }
    const entry: Entry = typeof value === "string" || Buffer.isBuffer(value) ? { content: value } : value;
    const blob = entry.sha ?? execFileSync("git", ["hash-object", "-w", "--stdin"], { cwd: dir, input: entry.content, encoding: "utf8" }).trim();
    chunks.push(Buffer.from(`${entry.mode ?? "100644"} ${blob}\t`), raw, Buffer.from([0]));
  }
  execFileSync("git", ["update-index", "-z", "--index-info"], { cwd: dir, input: Buffer.concat(chunks), env: { ...process.env, ...env } });
  const tree = git(dir, ["write-tree"], { env });
  const sha = git(dir, ["commit-tree", tree, ...(from !== null ? ["-p", from] : []), "-m", message]);
  execFileSync("rm", ["-f", index]);
  if (name !== null) git(dir, ["update-ref", `refs/heads/${name}`, sha]);
  return sha;
}

async function setup(files: Record<string, string> = { "README.md": "# test\n" }) {
  const dir = await createTestRepo(files);
  const ws = await LocalWorkspace.open(dir, { sandbox: false });
  return { dir, ws };
}

/** What the checkout is: HEAD, porcelain status, and the bytes of each given path (or a link's target). */
function snapshot(dir: string, paths: string[]) {
  const contents: Record<string, string | null> = {};
  for (const path of paths) {
    const full = join(dir, path);
    const info = lstatSync(full, { throwIfNoEntry: false });
    const value = !info ? null : info.isSymbolicLink() ? `link:${readlinkSync(full)}` : info.isDirectory() ? "<dir>" : readFileSync(full, "latin1");
    contents[path] = value;
  }
  return { head: git(dir, ["rev-parse", "HEAD"]), status: git(dir, ["status", "--porcelain", "--untracked-files=all"]), contents, stash: git(dir, ["stash", "list"]) };
}

describe("mergeMany: names git might read as options or revision syntax", () => {
  it("refuses option-like names and non-commit objects with merge_failed, changing nothing and writing no file", async () => {
    const { dir, ws } = await setup({ "README.md": "# test\n", "sub/x.txt": "x\n" });
    makeCommit(dir, "keen/ok", { "ok.txt": "ok\n" });
    const tree = git(dir, ["rev-parse", "main^{tree}"]);
    const blob = git(dir, ["rev-parse", "main:README.md"]);
    git(dir, ["tag", "tree-tag", tree]);
    git(dir, ["tag", "-a", "-m", "t", "blob-tag", blob]);
    const before = snapshot(dir, ["README.md"]);
    const bad = [
      "-h", "--output=out.txt", "--all", "--", "-", "--end-of-options", "--git-dir=/tmp", "-q",
      tree, blob, `${tree}^{tree}`, "main^{tree}", "main:README.md", "main:sub", ":README.md", "tree-tag", "blob-tag",
      "main..keen/ok", "main...keen/ok", "^main", "keen/ok^!", "keen/ok^@", "keen/ok^-",
      "keen/ok\nmain", "keen/ok main", " keen/ok", "keen/ok ", "keen/ok\0", "a\0--output=out2.txt", "\n",
      "no-such-branch", "x".repeat(200_000), "'; touch pwned.txt; '", "$(touch pwned2.txt)",
      "0".repeat(40), "@{99}", "main@{99}",
    ];
    for (const name of bad) {
      await expect(ws.mergeMany([{ branch: "keen/ok", message: "m" }, { branch: name, message: "m" }]), JSON.stringify(name.slice(0, 60))).rejects.toMatchObject({ code: "merge_failed" });
      await expect(ws.mergeMany([{ branch: name, message: "m" }]), JSON.stringify(name.slice(0, 60))).rejects.toMatchObject({ code: "merge_failed" });
    }
    expect(snapshot(dir, ["README.md"])).toEqual(before);
    for (const file of ["out.txt", "out2.txt", "pwned.txt", "pwned2.txt", "ok.txt"]) expect(existsSync(join(dir, file)), file).toBe(false);
  });

  it("a file in the worktree named like `<name>^{commit}` (rev-parse's filename fallback) never passes as a commit", async () => {
    const { dir, ws } = await setup();
    const ok = makeCommit(dir, "keen/ok", { "ok.txt": "ok\n" });
    // rev-parse prints a non-revision that names an existing file as is, and every argument after it too.
    await writeFile(join(dir, "ghost^{commit}"), "x");
    await writeFile(join(dir, `${ok}^{commit}`), "x");
    await expect(ws.mergeMany([{ branch: "ghost", message: "m" }, { branch: "keen/ok", message: "m" }])).rejects.toMatchObject({ code: "merge_failed" });
    expect(existsSync(join(dir, "ok.txt"))).toBe(false);
  });

  it("reads a name only as a branch, as merge does: other commit-ish names are refused by both, a branch gives the same merge", async () => {
    const { dir, ws } = await setup();
    const one = makeCommit(dir, "keen/one", { "one.txt": "1\n" });
    git(dir, ["tag", "-a", "-m", "annotated", "v-one", one]);
    const before = snapshot(dir, ["README.md"]);
    for (const name of ["HEAD", "@", one, one.slice(0, 12), "v-one", "keen/one~0", "keen/one@{0}", "refs/heads/keen/one"]) {
      await expect(ws.mergeMany([{ branch: name, message: "m" }]), name).rejects.toMatchObject({ code: "merge_failed" });
      await expect(ws.merge(name, "m"), name).rejects.toMatchObject({ code: "merge_failed" });
    }
    expect(snapshot(dir, ["README.md"])).toEqual(before);
    const at = await ws.head();
    const [viaMany] = await ws.mergeMany([{ branch: "keen/one", message: "many" }]);
    git(dir, ["reset", "-q", "--hard", at]);
    const viaMerge = (await ws.merge("keen/one", "merge")) as { sha: string };
    expect(git(dir, ["rev-parse", `${viaMany!.sha}^{tree}`])).toBe(git(dir, ["rev-parse", `${viaMerge.sha}^{tree}`]));
    expect(git(dir, ["log", "-1", "--format=%P", viaMany!.sha])).toBe(git(dir, ["log", "-1", "--format=%P", viaMerge.sha]));
    // The branch it is already on merges as a no-op.
    expect(await ws.mergeMany([{ branch: "main", message: "m" }])).toEqual([{ branch: "main", sha: await ws.head() }]);
  });

  // A name is read as refs/heads/<name> only: a tag (or refs/<name>) of the same name is never merged in its place.
  it("merges the branch named, not a tag of the same name", async () => {
    const { dir, ws } = await setup();
    const branchTip = makeCommit(dir, "keen/same", { "branch.txt": "b\n" });
    const tagTip = makeCommit(dir, null, { "tag.txt": "t\n" });
    git(dir, ["tag", "keen/same", tagTip]);
    const merged = await ws.mergeMany([{ branch: "keen/same", message: "m" }]);
    expect(git(dir, ["rev-parse", `${merged[0]!.sha}^2`])).toBe(branchTip);
  });
});

describe("mergeMany: message content", () => {
  it("stores every message exactly as `merge` stores it, and runs nothing", async () => {
    const { dir, ws } = await setup();
    const proof = join(await mkdtemp(join(tmpdir(), "keen-proof-")), "ran");
    const messages = [
      "a\0b", "\u0001\u001b[31mred\u0007", "-m --no-ff", "--amend", "   ", "", "\n\n\n", "\t", "x\r\ny\r\n",
      "#not a comment\nbody", "tab at end\t", "trail  \n\n\n\nnext  ", "y".repeat(50_000),
      `'; touch ${proof}; '`, `$(touch ${proof})`, `\`touch ${proof}\``, "\u00e9\u4e2d\ud83d\ude00",
      "ends with vt\u000b", "\u2028", "\u00a0",
    ];
    let i = 0;
    for (const message of messages) {
      const a = makeCommit(dir, `keen/m${i}a`, { [`m${i}a.txt`]: "a\n" });
      const b = makeCommit(dir, `keen/m${i}b`, { [`m${i}b.txt`]: "b\n" });
      const [many] = await ws.mergeMany([{ branch: `keen/m${i}a`, message }]);
      const viaMerge = await ws.merge(`keen/m${i}b`, message);
      expect(viaMerge.status).toBe("merged");
      const label = JSON.stringify(message.slice(0, 40));
      expect(git(dir, ["rev-parse", `${many!.sha}^2`]), label).toBe(a);
      const stored = (sha: string) => execFileSync("git", ["cat-file", "commit", sha], { cwd: dir }).toString("latin1").split("\n\n").slice(1).join("\n\n");
      expect(stored(many!.sha), label).toBe(stored((viaMerge as { sha: string }).sha));
      expect(b).toBeTruthy();
      i++;
    }
    expect(existsSync(proof)).toBe(false);
  });

  // Only ASCII white space is stripped from line ends, as `git merge -m` strips it.
  it("stores a line ending in Unicode whitespace as merge does", async () => {
    const { dir, ws } = await setup();
    for (const [i, message] of ["line with nbsp\u00a0", "ideographic\u3000", "bom\ufeff\nnext"].entries()) {
      makeCommit(dir, `keen/u${i}a`, { [`u${i}a.txt`]: "a\n" });
      makeCommit(dir, `keen/u${i}b`, { [`u${i}b.txt`]: "b\n" });
      const [many] = await ws.mergeMany([{ branch: `keen/u${i}a`, message }]);
      const viaMerge = (await ws.merge(`keen/u${i}b`, message)) as { sha: string };
      expect(git(dir, ["log", "-1", "--format=%B", many!.sha]), JSON.stringify(message)).toBe(git(dir, ["log", "-1", "--format=%B", viaMerge.sha]));
    }
  });
});

describe("mergeMany: a worktree that cannot take the result changes nothing", () => {
  async function refused(dir: string, ws: LocalWorkspace, branches: string[], paths: string[]) {
    const before = snapshot(dir, paths);
    await expect(ws.mergeMany(branches.map((branch) => ({ branch, message: `Merge ${branch}` })))).rejects.toMatchObject({ code: "merge_failed" });
    expect(snapshot(dir, paths)).toEqual(before);
    return before;
  }

  it("an untracked file, a modified tracked file, a folder, or a symlink where a file will go", async () => {
    const { dir, ws } = await setup({ "README.md": "# test\n", "t.txt": "t\n" });
    makeCommit(dir, "keen/first", { "first.txt": "1\n" });
    makeCommit(dir, "keen/untracked", { "u.txt": "theirs\n" });
    makeCommit(dir, "keen/tracked", { "t.txt": "theirs\n" });
    makeCommit(dir, "keen/folder", { "d": "file now\n" });
    makeCommit(dir, "keen/link", { "l.txt": "theirs\n" });
    const outside = await mkdtemp(join(tmpdir(), "keen-outside-"));
    await writeFile(join(outside, "secret"), "secret\n");
    await writeFile(join(dir, "u.txt"), "mine\n");
    await writeFile(join(dir, "t.txt"), "mine\n");
    await mkdir(join(dir, "d"));
    await writeFile(join(dir, "d", "inner.txt"), "mine\n");
    await symlink(join(outside, "secret"), join(dir, "l.txt"));
    const paths = ["u.txt", "t.txt", "d", "d/inner.txt", "l.txt", "first.txt"];
    for (const branch of ["keen/untracked", "keen/tracked", "keen/folder", "keen/link"]) {
      await refused(dir, ws, ["keen/first", branch], paths);
    }
    expect(await readFile(join(outside, "secret"), "utf8")).toBe("secret\n");
  });

  it("an untracked symlinked folder where the merge adds files below it", async () => {
    const { dir, ws } = await setup();
    makeCommit(dir, "keen/below", { "ln/f.txt": "theirs\n" });
    const outside = await mkdtemp(join(tmpdir(), "keen-outside-"));
    await symlink(outside, join(dir, "ln"));
    // What merge does with the same input.
    const at = await ws.head();
    let mergeOutcome: string;
    try {
      mergeOutcome = (await ws.merge("keen/below", "m")).status;
    } catch (error) {
      mergeOutcome = (error as { code?: string }).code ?? "error";
    }
    const mergeLink = existsSync(join(dir, "ln")) ? (() => { try { return readlinkSync(join(dir, "ln")); } catch { return "<dir>"; } })() : null;
    git(dir, ["reset", "-q", "--hard", at]);
    execFileSync("rm", ["-rf", join(dir, "ln")]);
    await symlink(outside, join(dir, "ln"));
    let manyOutcome: string;
    try {
      await ws.mergeMany([{ branch: "keen/below", message: "m" }]);
      manyOutcome = "merged";
    } catch (error) {
      manyOutcome = (error as { code?: string }).code ?? "error";
    }
    // Nothing is written through the link, whatever happens.
    expect(await readdir(outside)).toEqual([]);
    expect({ manyOutcome }).toEqual({ manyOutcome: mergeOutcome });
    const manyLink = existsSync(join(dir, "ln")) ? (() => { try { return readlinkSync(join(dir, "ln")); } catch { return "<dir>"; } })() : null;
    expect(manyLink).toBe(mergeLink);
  });

  it("a merge in progress (MERGE_HEAD) is not disturbed", async () => {
    const { dir, ws } = await setup({ "README.md": "# test\n", "a.txt": "base\n" });
    makeCommit(dir, "keen/x", { "a.txt": "x\n" });
    makeCommit(dir, "keen/y", { "a.txt": "y\n" });
    makeCommit(dir, "keen/z", { "z.txt": "z\n" });
    expect((await ws.merge("keen/x", "x")).status).toBe("merged");
    expect((await ws.merge("keen/y", "y")).status).toBe("conflict");
    const before = snapshot(dir, ["a.txt", "z.txt"]);
    await expect(ws.mergeMany([{ branch: "keen/z", message: "z" }])).rejects.toMatchObject({ code: "merge_failed" });
    expect(snapshot(dir, ["a.txt", "z.txt"])).toEqual(before);
    expect(existsSync(join(dir, ".git", "MERGE_HEAD"))).toBe(true);
  });

  // keen's git calls run with merge.autoStash=false: a user's `true` never stashes a file in the way and puts it back with conflict markers.
  it("a modified tracked file in the way with the user's merge.autoStash=true: refused, nothing changed", async () => {
    const { dir, ws } = await setup({ "README.md": "# test\n", "t.txt": "t\n" });
    git(dir, ["config", "merge.autoStash", "true"]);
    makeCommit(dir, "keen/tracked", { "t.txt": "theirs\n" });
    await writeFile(join(dir, "t.txt"), "mine\n");
    const before = await refused(dir, ws, ["keen/tracked"], ["t.txt"]);
    // merge alike: refused, the edit in place, no stash.
    await expect(ws.merge("keen/tracked", "m")).rejects.toMatchObject({ code: "merge_failed" });
    expect(snapshot(dir, ["t.txt"])).toEqual(before);
  });

  // Staged changes stop mergeMany before anything moves, as they stop `merge`.
  it("a change staged in the parent's index: mergeMany succeeds or fails as merge does, and never commits it", async () => {
    const run = async (how: "many" | "one") => {
      const { dir, ws } = await setup({ "README.md": "# test\n", "s.txt": "s\n" });
      makeCommit(dir, "keen/x", { "x.txt": "x\n" });
      await writeFile(join(dir, "s.txt"), "staged\n");
      git(dir, ["add", "s.txt"]);
      let outcome: string;
      try {
        outcome = how === "many" ? (await ws.mergeMany([{ branch: "keen/x", message: "m" }]), "merged") : (await ws.merge("keen/x", "m")).status;
      } catch (error) {
        outcome = (error as { code?: string }).code ?? "error";
      }
      return { outcome, committed: git(dir, ["show", "HEAD:s.txt"]), status: git(dir, ["status", "--porcelain"]) };
    };
    const many = await run("many");
    const one = await run("one");
    expect(many.committed).toBe("s");
    expect(many).toEqual(one);
  });

  it("a sparse parent with a file on disk outside its paths where a merged file goes: as merge does, the file kept", async () => {
    const files = { "README.md": "# test\n", "src/a.ts": "a\n", "other/b.ts": "b\n" };
    const run = async (how: "many" | "one") => {
      const dir = await createTestRepo(files);
      const ws = await LocalWorkspace.open(dir, { sandbox: false });
      const parent = await ws.fork(`keen/sparse-${how}`, { paths: ["src"] });
      const child = await parent.fork(`keen/sparse-${how}-child`);
      await child.writeFile("other/new.ts", "theirs\n");
      await child.writeFile("other/b.ts", "b2\n");
      await child.commit("child", author);
      await child.dispose();
      // The parent's command left files outside its paths.
      await mkdir(join(parent.root, "other"), { recursive: true });
      await writeFile(join(parent.root, "other", "new.ts"), "mine\n");
      await writeFile(join(parent.root, "other", "b.ts"), "mine b\n");
      let outcome: string;
      try {
        if (how === "many") await parent.mergeMany([{ branch: `keen/sparse-${how}-child`, message: "m" }]);
        else outcome = (await parent.merge(`keen/sparse-${how}-child`, "m")).status;
        outcome ??= "merged";
      } catch (error) {
        outcome = (error as { code?: string }).code ?? "error";
      }
      const result = {
        outcome: outcome!,
        newTs: await readFile(join(parent.root, "other", "new.ts"), "utf8").catch(() => null),
        bTs: await readFile(join(parent.root, "other", "b.ts"), "utf8").catch(() => null),
        tree: git(parent.root, ["ls-tree", "-r", "HEAD", "--", "other"]).replace(/[0-9a-f]{40}/g, "<id>"),
      };
      await parent.dispose().catch(() => {});
      return result;
    };
    const many = await run("many");
    const one = await run("one");
    expect(many).toEqual(one);
    // The user's bytes survive.
    if (many.outcome === "merged") {
      expect(many.newTs).toBe("mine\n");
      expect(many.bTs).toBe("mine b\n");
    }
  });
});

describe("mergeMany: histories and lists", () => {
  it("an unrelated history (orphan branch) is refused as merge refuses it, after no partial move", async () => {
    const { dir, ws } = await setup();
    makeCommit(dir, "keen/one", { "one.txt": "1\n" });
    git(dir, ["checkout", "-q", "--orphan", "orphan"]);
    git(dir, ["rm", "-q", "-rf", "."]);
    await writeFile(join(dir, "o.txt"), "o\n");
    git(dir, ["add", "o.txt"]);
    git(dir, ["commit", "-q", "-m", "orphan"]);
    git(dir, ["checkout", "-q", "-f", "main"]);
    const before = snapshot(dir, ["o.txt", "one.txt"]);
    await expect(ws.merge("orphan", "m")).rejects.toMatchObject({ code: "merge_failed" });
    expect(snapshot(dir, ["o.txt", "one.txt"])).toEqual(before);
    await expect(ws.mergeMany([{ branch: "keen/one", message: "m" }, { branch: "orphan", message: "m" }])).rejects.toMatchObject({ code: "merge_failed" });
    expect(snapshot(dir, ["o.txt", "one.txt"])).toEqual(before);
  });

  it("contained branches and duplicates in the middle of a list are no-ops returning HEAD, as merge one by one", async () => {
    const { dir, ws } = await setup();
    makeCommit(dir, "keen/a", { "a.txt": "a\n" });
    makeCommit(dir, "keen/b", { "b.txt": "b\n" });
    git(dir, ["branch", "keen/old", "main"]);
    const list = ["keen/old", "keen/a", "keen/old", "keen/a", "keen/b", "keen/b", "main", "keen/a"];
    const at = await ws.head();
    const many = await ws.mergeMany(list.map((branch) => ({ branch, message: `Merge ${branch}` })));
    const manyHead = await ws.head();
    git(dir, ["reset", "-q", "--hard", at]);
    const one: Array<{ branch: string; sha: string }> = [];
    for (const branch of list) {
      const result = await ws.merge(branch, `Merge ${branch}`);
      expect(result.status).toBe("merged");
      one.push({ branch, sha: (result as { sha: string }).sha });
    }
    expect(many.map((m) => m.branch)).toEqual(list);
    // Same shape: which entries moved HEAD, and the same trees and parents' second parents.
    const shape = (rows: typeof many) => rows.map((m, i) => (i > 0 && m.sha === rows[i - 1]!.sha) || m.sha === at ? "same" : "new");
    expect(shape(many)).toEqual(shape(one));
    expect(git(dir, ["rev-parse", `${manyHead}^{tree}`])).toBe(git(dir, ["rev-parse", "HEAD^{tree}"]));
    expect(git(dir, ["rev-list", "--count", manyHead])).toBe(git(dir, ["rev-list", "--count", "HEAD"]));
  });

  // git reads merge attributes from the worktree, which mergeMany moves only at the end: the list
  // stops after a merge that changes a .gitattributes file, so the next one is merged under the new rules.
  it("a .gitattributes brought by an earlier branch in the list takes effect for later ones, as with merge", async () => {
    const lines = Array.from({ length: 10 }, (_, i) => `line ${i + 1}`).join("\n") + "\n";
    const { dir, ws } = await setup({ "README.md": "# test\n", "f.txt": lines });
    makeCommit(dir, "keen/attrs", { ".gitattributes": "f.txt merge=binary\n", "f.txt": lines.replace("line 1\n", "line ONE\n") });
    makeCommit(dir, "keen/later", { "f.txt": lines.replace("line 10\n", "line TEN\n") });
    const at = await ws.head();
    const viaMerge = [(await ws.merge("keen/attrs", "a")).status, (await ws.merge("keen/later", "b")).status];
    await ws.abortMerge();
    git(dir, ["reset", "-q", "--hard", at]);
    const many = await ws.mergeMany([{ branch: "keen/attrs", message: "a" }, { branch: "keen/later", message: "b" }]);
    expect(viaMerge).toEqual(["merged", "conflict"]);
    expect(many.map((m) => m.branch)).toEqual(["keen/attrs"]);
  });

  it("uncommitted .gitattributes in the parent's worktree affect mergeMany exactly as they affect merge", async () => {
    const lines = Array.from({ length: 6 }, (_, i) => `line ${i + 1}`).join("\n") + "\n";
    const { dir, ws } = await setup({ "README.md": "# test\n", "f.txt": lines });
    makeCommit(dir, "keen/x", { "f.txt": lines.replace("line 3\n", "X\n") });
    makeCommit(dir, "keen/y", { "f.txt": lines.replace("line 3\n", "Y\n") });
    await writeFile(join(dir, ".gitattributes"), "* merge=union\n");
    const at = await ws.head();
    const seq = [(await ws.merge("keen/x", "x")).status, (await ws.merge("keen/y", "y")).status];
    const seqTree = git(dir, ["rev-parse", "HEAD^{tree}"]);
    await ws.abortMerge();
    git(dir, ["reset", "-q", "--hard", at]);
    const many = await ws.mergeMany([{ branch: "keen/x", message: "x" }, { branch: "keen/y", message: "y" }]);
    expect(many.length).toBe(seq.filter((s) => s === "merged").length);
    if (many.length === 2) expect(git(dir, ["rev-parse", "HEAD^{tree}"])).toBe(seqTree);
  });

  it("filter and eol attributes written by a child branch give the same trees and files as merge", async () => {
    const { dir, ws } = await setup({ "README.md": "# test\n", "a.txt": "a\n" });
    makeCommit(dir, "keen/filter", { ".gitattributes": "* filter=x\n*.txt text eol=crlf\n", "f.txt": "one\ntwo\n" });
    makeCommit(dir, "keen/other", { "o.txt": "o\n", "a.txt": "a2\n" });
    const at = await ws.head();
    for (const b of ["keen/filter", "keen/other"]) expect((await ws.merge(b, b)).status).toBe("merged");
    const seq = { tree: git(dir, ["rev-parse", "HEAD^{tree}"]), f: await readFile(join(dir, "f.txt"), "latin1"), o: await readFile(join(dir, "o.txt"), "latin1"), status: git(dir, ["status", "--porcelain"]) };
    git(dir, ["reset", "-q", "--hard", at]);
    git(dir, ["clean", "-q", "-fdx"]);
    // The first changes .gitattributes: mergeMany stops after it, and the rest go through merge.
    const list = ["keen/filter", "keen/other"];
    const done = await ws.mergeMany(list.map((branch) => ({ branch, message: branch })));
    expect(done.map((m) => m.branch)).toEqual(["keen/filter"]);
    for (const branch of list.slice(done.length)) expect((await ws.merge(branch, branch)).status).toBe("merged");
    const many = { tree: git(dir, ["rev-parse", "HEAD^{tree}"]), f: await readFile(join(dir, "f.txt"), "latin1"), o: await readFile(join(dir, "o.txt"), "latin1"), status: git(dir, ["status", "--porcelain"]) };
    expect(many).toEqual(seq);
  });
});

describe("mergeMany: concurrency", () => {
  it("two mergeMany calls and a commit at once end consistent: every reported sha exists, HEAD contains them all", async () => {
    const { dir, ws } = await setup();
    for (const n of ["a", "b", "c", "d"]) makeCommit(dir, `keen/${n}`, { [`${n}.txt`]: `${n}\n` });
    const other = await LocalWorkspace.open(dir, { sandbox: false });
    await ws.writeFile("mine.txt", "mine\n");
    const [first, second, committed, third] = await Promise.all([
      ws.mergeMany([{ branch: "keen/a", message: "a" }, { branch: "keen/b", message: "b" }]),
      ws.mergeMany([{ branch: "keen/b", message: "b again" }, { branch: "keen/c", message: "c" }]),
      ws.commit("mine", author),
      other.mergeMany([{ branch: "keen/d", message: "d" }, { branch: "keen/a", message: "a again" }]),
    ]);
    const head = await ws.head();
    for (const { branch, sha } of [...first, ...second, ...third, { branch: "HEAD", sha: committed.sha! }]) {
      expect(git(dir, ["cat-file", "-t", sha]), branch).toBe("commit");
      expect(execFileSync("git", ["merge-base", "--is-ancestor", sha, head], { cwd: dir }).length, `${branch} ${sha} in HEAD`).toBe(0);
      if (branch !== "HEAD") expect(execFileSync("git", ["merge-base", "--is-ancestor", branch, head], { cwd: dir }).length).toBe(0);
    }
    expect(git(dir, ["status", "--porcelain"])).toBe("");
    for (const n of ["a", "b", "c", "d", "mine"]) expect(existsSync(join(dir, `${n}.txt`)), n).toBe(true);
  });

  it("a branch that moves while mergeMany runs: the reported merge's second parent is a commit of that branch's history", async () => {
    const { dir, ws } = await setup();
    const fork = await ws.fork("keen/moving");
    await fork.writeFile("m1.txt", "1\n");
    await fork.commit("m1", author);
    await fork.writeFile("m2.txt", "2\n");
    const [merged, second] = await Promise.all([ws.mergeMany([{ branch: "keen/moving", message: "m" }]), fork.commit("m2", author)]);
    const parent2 = git(dir, ["rev-parse", `${merged[0]!.sha}^2`]);
    expect(execFileSync("git", ["merge-base", "--is-ancestor", parent2, second.sha!], { cwd: dir }).length).toBe(0);
    expect(await ws.head()).toBe(merged[0]!.sha);
    await fork.dispose();
  });
});

describe("listCommitFiles: attacks", () => {
  it("refuses option-like, non-commit and syntax-laden names with invalid_ref, writing nothing", async () => {
    const { dir, ws } = await setup({ "README.md": "# test\n", "sub/x.txt": "x\n" });
    const tree = git(dir, ["rev-parse", "main^{tree}"]);
    const blob = git(dir, ["rev-parse", "main:README.md"]);
    git(dir, ["tag", "tree-tag", tree]);
    for (const bad of [
      "-c", "--output=o.txt", "-r", "--format=%(objectname)", "--", "-", "--end-of-options",
      tree, blob, "main^{tree}", "HEAD:sub", "HEAD:README.md", ":README.md", "tree-tag",
      "main..main", "main\nmain", "main main", "main\0", "x".repeat(200_000), "'; touch pwned.txt; '", "$(touch pwned2.txt)", "@{99}",
    ]) {
      await expect(ws.listCommitFiles(bad), JSON.stringify(bad.slice(0, 40))).rejects.toMatchObject({ code: "invalid_ref" });
    }
    for (const file of ["o.txt", "pwned.txt", "pwned2.txt"]) expect(existsSync(join(dir, file)), file).toBe(false);
  });

  it("lists paths with newlines, tabs, quotes, backslashes and leading dashes exactly", async () => {
    const { dir, ws } = await setup();
    const names = ["a\nb.txt", "t\tab.txt", "q\"uote.txt", "b\\slash.txt", "-c", "--output=x", "-dash/--deep", " lead space", "trail space ", "\u00e9\u0301.txt", "'single'"];
    const sha = makeCommit(dir, null, Object.fromEntries(names.map((n) => [n, "x\n"])), "main");
    expect(await ws.listCommitFiles(sha)).toEqual([...names, "README.md"].sort());
  });

  // A name that is not UTF-8 cannot be given back as the path it is: it is left out, as listFiles leaves it out.
  it("never returns a name that is not a path of the commit (non-UTF-8 bytes)", async () => {
    const { dir, ws } = await setup();
    const sha = makeCommit(dir, null, [
      [Buffer.from([0x62, 0xff, 0x2e, 0x74]), { content: "1\n" }],
      [Buffer.from([0x62, 0xfe, 0x2e, 0x74]), { content: "2\n" }],
      ["b\ufffd.t", { content: "3\n" }],
    ]);
    const listed = await ws.listCommitFiles(sha);
    const raw = execFileSync("git", ["ls-tree", "-r", "-z", "--name-only", sha], { cwd: dir })
      .toString("latin1")
      .split("\0")
      .filter(Boolean);
    for (const name of listed) expect(raw, name).toContain(Buffer.from(name, "utf8").toString("latin1"));
    expect(new Set(listed).size).toBe(listed.length);
  });

  it("accepts any commit-ish (annotated tag, ~) and a commit with a symlink and a gitlink entry", async () => {
    const { dir, ws } = await setup();
    const head = git(dir, ["rev-parse", "HEAD"]);
    const sha = makeCommit(dir, "keen/l", { link: { content: "README.md", mode: "120000" }, sub: { content: "", mode: "160000", sha: git(dir, ["rev-parse", "HEAD"]) } }, "main", "unique-message-xyz");
    git(dir, ["tag", "-a", "-m", "t", "v1", sha]);
    expect(await ws.listCommitFiles("v1")).toEqual(["README.md", "link", "sub"]);
    expect(await ws.listCommitFiles("keen/l~1")).toEqual(["README.md"]);
    expect(head).toBeTruthy();
  });
});
