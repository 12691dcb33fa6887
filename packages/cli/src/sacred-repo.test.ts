import { mkdir, mkdtemp, readFile, symlink, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import type { KeenEventOf } from "@keen/agent-core";
import { reply, startMessagesServer, type MessagesServer } from "@keen/agent-core/testing";
import { scriptedTreePolicy, type ScriptedTask } from "./demo/scripted-tree.js";
import { git, gitRepo, identity, keen, parseNdjson } from "./testing/keen-process.js";
import { repoState, stateDiff } from "./testing/repo-state.js";

const write = (path: string, content: string) => reply.toolUse("write_file", { path, content });
const sh = (dir: string, script: string) => execa("sh", ["-c", script], { cwd: dir, env: identity });

/** One agent that writes one file; a second tree with a child, so a child merge happens. */
const single: ScriptedTask = { title: "Note", instructions: "Write the note.", work: [write("keen-note.txt", "from keen\n")] };

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

/**
 * Runs `keen run` on `repo` and checks the user's repository is exactly as it was, but for keen's
 * own refs (all of them this run's). Returns the result, its events and the run branch.
 */
async function sacredRun(repo: string, args: string[] = [], task: ScriptedTask = single) {
  server ??= await startMessagesServer({ policy: scriptedTreePolicy(task) });
  const before = repoState(repo);
  const result = await keen(["run", task.instructions, "--repo", repo, "--json", "--no-sandbox", ...args], { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url });
  const after = repoState(repo);
  const { changed, keenRefsAdded } = stateDiff(before, after);
  expect(changed, result.stderr).toEqual([]);
  const events = result.stdout.trim() ? parseNdjson(result.stdout) : [];
  const started = events.find((e) => e.type === "run.started") as KeenEventOf<"run.started"> | undefined;
  const rb = started?.branch;
  for (const line of keenRefsAdded) expect(rb && (line.startsWith(`refs/heads/${rb} `) || line.startsWith(`refs/heads/${rb}-agents/`) || line.startsWith("refs/keen/"))).toBeTruthy();
  return { result, events, rb, before, after };
}

describe("keen run leaves the user's repository alone, whatever state it is in", { timeout: 120_000 }, () => {
  it("detached HEAD: the run starts from the detached commit", async () => {
    const dir = await gitRepo({ "README.md": "# one\n" });
    await sh(dir, "echo two > README.md && git commit -qam two && git checkout -q --detach HEAD~1");
    const { result, rb } = await sacredRun(dir);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(await git(dir, "show", `${rb}:README.md`)).toBe("# one");
  });

  it("unborn branch (no commits yet): refused with a clear message, nothing written", async () => {
    const dir = await mkdtemp(join(tmpdir(), "keen-unborn-"));
    await execa("git", ["init", "-q", "-b", "main"], { cwd: dir });
    await writeFile(join(dir, "draft.txt"), "mine\n");
    const { result } = await sacredRun(dir);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/has no commits yet \(its branch is unborn\); a run branch starts from a commit: commit first, or pass --base/);
  });

  it.each([
    ["merge", "git checkout -q -b other && echo other > README.md && git commit -qam other && git checkout -q main && echo main > README.md && git commit -qam main && ! git merge -q other"],
    ["rebase", "git checkout -q -b other && echo other > README.md && git commit -qam other && git checkout -q main && echo main > README.md && git commit -qam main && git checkout -q other && ! git rebase -q main"],
    ["cherry-pick", "git checkout -q -b other && echo other > README.md && git commit -qam other && git checkout -q main && echo main > README.md && git commit -qam main && ! git cherry-pick other"],
  ])("in the middle of a %s with conflicts: runs from HEAD without touching the operation", async (_name, script) => {
    const dir = await gitRepo({ "README.md": "# base\n" });
    await sh(dir, `${script} >/dev/null 2>&1; true`);
    expect(await git(dir, "diff", "--name-only", "--diff-filter=U")).toBe("README.md");
    const { result, rb } = await sacredRun(dir);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(await git(dir, "show", `${rb}:keen-note.txt`)).toBe("from keen");
    expect(await git(dir, "diff", "--name-only", "--diff-filter=U")).toBe("README.md");
  });

  it("sparse checkout: the run sees the whole tree, the user's sparse patterns stay", async () => {
    const dir = await gitRepo({ "README.md": "# r\n", "a/one.txt": "1\n", "b/two.txt": "2\n" });
    await sh(dir, "git sparse-checkout set a");
    expect(existsSync(join(dir, "b"))).toBe(false);
    const { result, rb } = await sacredRun(dir);
    expect(result.exitCode, result.stderr).toBe(0);
    expect((await git(dir, "ls-tree", "-r", "--name-only", rb!)).split("\n")).toEqual(["README.md", "a/one.txt", "b/two.txt", "keen-note.txt"]);
  });

  it("a dirty submodule, also with --include-uncommitted (the submodule's work is not reached into)", async () => {
    const sub = await gitRepo({ "lib.txt": "lib\n" });
    const dir = await gitRepo({ "README.md": "# r\n" });
    await sh(dir, `git -c protocol.file.allow=always submodule add -q ${sub} vendor/lib && git commit -qm sub && echo dirty >> vendor/lib/lib.txt && echo new > vendor/lib/untracked.txt`);
    const plain = await sacredRun(dir);
    expect(plain.result.exitCode, plain.result.stderr).toBe(0);
    const carried = await sacredRun(dir, ["--include-uncommitted"]);
    expect(carried.result.exitCode, carried.result.stderr).toBe(0);
    expect(await git(sub, "status", "--porcelain")).toBe("");
  });

  it("a clean/smudge filter in .git/config: applied as git would (the run branch holds the cleaned blob), never in the user's checkout", async () => {
    const dir = await gitRepo({ "README.md": "# r\n", "data.bin": "payload\n" });
    const log = join(await mkdtemp(join(tmpdir(), "keen-filter-")), "filter.log");
    await sh(dir, `echo 'data.bin filter=spy' > .gitattributes && git add .gitattributes && git commit -qm attrs`);
    await sh(dir, `git config filter.spy.smudge 'echo smudge >> ${log}; sed s/^clean://' && git config filter.spy.clean 'echo clean >> ${log}; sed s/^/clean:/'`);
    await writeFile(join(dir, "data.bin"), "edited\n");
    const plain = await sacredRun(dir);
    expect(plain.result.exitCode, plain.result.stderr).toBe(0);
    const carried = await sacredRun(dir, ["--include-uncommitted"]);
    expect(carried.result.exitCode, carried.result.stderr).toBe(0);
    // What `git add` would have stored: the clean filter's output.
    expect(await git(dir, "cat-file", "blob", `${carried.rb}:data.bin`)).toBe("clean:edited");
    expect(await readFile(join(dir, "data.bin"), "utf8")).toBe("edited\n");
  });

  it("core.autocrlf with CRLF files: the user's files and index stay byte-identical", async () => {
    const dir = await gitRepo({ "README.md": "# r\n" });
    await sh(dir, "git config core.autocrlf true && printf 'a\\r\\nb\\r\\n' > crlf.txt && printf 'x\\ny\\n' > lf.txt && git add crlf.txt lf.txt && git commit -qm eol && printf 'a\\r\\nc\\r\\n' > crlf.txt");
    const { result, rb } = await sacredRun(dir, ["--include-uncommitted"]);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(await git(dir, "show", `${rb}:crlf.txt`)).toBe("a\nc");
  });

  it("a linked worktree as the repository: the run starts from its HEAD, the main checkout untouched too", async () => {
    const main = await gitRepo({ "README.md": "# r\n" });
    const linked = join(await mkdtemp(join(tmpdir(), "keen-linked-")), "wt");
    await sh(main, `git worktree add -q -b feature ${linked} && cd ${linked} && echo f > feature.txt && git add . && git commit -qm feature && echo wip > wip.txt`);
    const mainBefore = repoState(main);
    const { result, rb } = await sacredRun(linked, ["--include-uncommitted"]);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(await git(main, "show", `${rb}:feature.txt`)).toBe("f");
    expect(await git(main, "show", `${rb}:wip.txt`)).toBe("wip");
    expect(stateDiff(mainBefore, repoState(main)).changed).toEqual([]);
  });

  it("a bare repository: refused with a clear message", async () => {
    const source = await gitRepo({ "README.md": "# r\n" });
    const bare = join(await mkdtemp(join(tmpdir(), "keen-bare-")), "r.git");
    await execa("git", ["clone", "-q", "--bare", source, bare]);
    const { result } = await sacredRun(bare);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/bare|work tree|not a git repository/i);
  });

  it("extensions.worktreeConfig with per-worktree settings", async () => {
    const dir = await gitRepo({ "README.md": "# r\n" });
    await sh(dir, "git config extensions.worktreeConfig true && git config --worktree core.sparseCheckout false && git config --worktree user.name mine");
    const { result, rb } = await sacredRun(dir);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(await git(dir, "show", `${rb}:keen-note.txt`)).toBe("from keen");
  });

  it("a shallow clone", async () => {
    const source = await gitRepo({ "README.md": "# r\n" });
    await sh(source, "echo 2 >> README.md && git commit -qam two && echo 3 >> README.md && git commit -qam three");
    const dir = join(await mkdtemp(join(tmpdir(), "keen-shallow-")), "c");
    await execa("git", ["clone", "-q", "--depth", "1", `file://${source}`, dir]);
    const { result, rb } = await sacredRun(dir);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(await git(dir, "show", `${rb}:keen-note.txt`)).toBe("from keen");
  });

  it("a user branch named keen (keen/<id> cannot exist beside it): refused clearly, the branch untouched", async () => {
    const dir = await gitRepo({ "README.md": "# r\n" });
    await sh(dir, "git branch keen");
    const { result } = await sacredRun(dir);
    expect(result.exitCode, result.stderr).toBe(2);
    expect(result.stderr).toMatch(/keen/);
  });

  it("--branch naming an existing branch, or one clashing with a tag: refused", async () => {
    const dir = await gitRepo({ "README.md": "# r\n" });
    await sh(dir, "git branch keen/taken && git tag keen/tagged");
    const taken = await sacredRun(dir, ["--branch", "keen/taken"]);
    expect(taken.result.exitCode).toBe(2);
    const tagged = await sacredRun(dir, ["--branch", "keen/tagged"]);
    expect(tagged.result.exitCode, tagged.result.stderr).toBe(2);
  });
});

describe("--include-uncommitted carries exactly the work a user sees, and nothing it must not", { timeout: 120_000 }, () => {
  it("staged-then-modified, deleted, renamed, mode changes, links, odd names; ignored files, .env and big files stay out", async () => {
    const dir = await gitRepo({ "README.md": "# r\n", "staged.txt": "base\n", "gone.txt": "bye\n", "old name.txt": "moved\n", "run.sh": "echo hi\n", ".gitignore": "build/\n" });
    await sh(dir, "echo staged > staged.txt && git add staged.txt && echo worktree > staged.txt && git rm -q gone.txt && git mv 'old name.txt' 'new name.txt' && chmod +x run.sh");
    await symlink("README.md", join(dir, "link"));
    await writeFile(join(dir, "two\nlines.txt"), "nl\n");
    await writeFile(Buffer.from(join(dir, "latin-\xff.txt"), "latin1"), "bytes\n");
    await mkdir(join(dir, "build"));
    await writeFile(join(dir, "build", "out.bin"), "ignored\n");
    await writeFile(join(dir, ".env"), "API_KEY=sk-live-123\n");
    await writeFile(join(dir, "big.bin"), Buffer.alloc(6 * 1024 * 1024, 7));
    const { result, rb, events } = await sacredRun(dir, ["--include-uncommitted"]);
    expect(result.exitCode, result.stderr).toBe(0);
    const carried = await execa("git", ["ls-tree", "-r", "-z", `${rb}~1`], { cwd: dir, encoding: "buffer" });
    const entries = Buffer.from(carried.stdout)
      .toString("latin1")
      .split("\0")
      .filter(Boolean)
      .map((line) => `${line.split(" ")[0]} ${line.split("\t")[1]}`);
    expect(entries.sort()).toEqual(
      ["100644 .gitignore", "100644 README.md", "100644 new name.txt", "100755 run.sh", "100644 staged.txt", "120000 link", "100644 two\nlines.txt"].sort(),
    );
    expect(await git(dir, "show", `${rb}~1:staged.txt`)).toBe("worktree");
    const skipped = events.filter((e) => e.type === "git.skipped").flatMap((e) => (e as KeenEventOf<"git.skipped">).files.map((f) => `${f.path}:${f.reason}`));
    // A name that is not UTF-8 is reported, not carried (keen's git plumbing names paths as text).
    expect(skipped.sort()).toEqual([".env:credential", "big.bin:too_large", expect.stringMatching(/^latin-.+\.txt:invalid_name$/)]);
  });
});

describe("two runs at once, and a run killed mid-way", { timeout: 180_000 }, () => {
  it("two keen runs on one repository at the same time each finish on their own branch", async () => {
    server = await startMessagesServer({ policy: scriptedTreePolicy({ title: "Two", instructions: "Two", subtasks: [{ title: "A", instructions: "a", work: [write("a.txt", "a\n")] }], work: [write("root.txt", "r\n")] }, { delayMs: 50 }) });
    const dir = await gitRepo({ "README.md": "# r\n" });
    await writeFile(join(dir, "mine.txt"), "untracked\n");
    const before = repoState(dir);
    const env = { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url };
    const results = await Promise.all([1, 2].map(() => keen(["run", "Two", "--repo", dir, "--json", "--no-sandbox"], env)));
    for (const r of results) expect(r.exitCode, r.stderr).toBe(0);
    const branches = results.map((r) => (parseNdjson(r.stdout)[0] as KeenEventOf<"run.started">).branch);
    expect(new Set(branches).size).toBe(2);
    for (const rb of branches) expect((await git(dir, "ls-tree", "-r", "--name-only", rb)).split("\n")).toEqual(["README.md", "a.txt", "root.txt"]);
    expect(stateDiff(before, repoState(dir)).changed).toEqual([]);
    expect(await git(dir, "fsck", "--no-progress", "--no-dangling")).toBe("");
  });

  it.each(["finish_explore", "complete_task"] as const)("kill -9 at %s of a child: the user's checkout is untouched, nothing of it locked; --resume --last finishes and leaves no trace", async (phase) => {
    let child: ReturnType<typeof keen> | undefined;
    let killed = false;
    const tree: ScriptedTask = { title: "Kill", instructions: "Kill", subtasks: [{ title: "A", instructions: "a", work: [write("a.txt", "a\n"), write("a2.txt", "a2\n")] }] };
    server = await startMessagesServer({
      policy: scriptedTreePolicy(tree, {
        onRequest: async ({ agent, phase: at, turn }) => {
          if (!killed && agent === "A" && at === phase && turn === 1 - Number(phase === "finish_explore")) {
            killed = true;
            child!.kill("SIGKILL");
            await new Promise((resolve) => setTimeout(resolve, 300));
          }
        },
      }),
    });
    const dir = await gitRepo({ "README.md": "# r\n" });
    await writeFile(join(dir, "mine.txt"), "untracked\n");
    await sh(dir, "echo staged > staged.txt && git add staged.txt");
    const before = repoState(dir);
    const env = { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url };
    child = keen(["run", "Kill", "--repo", dir, "--json", "--no-sandbox"], env);
    expect((await child).signal).toBe("SIGKILL");
    const afterKill = repoState(dir);
    const { worktrees, ...rest } = stateDiff(before, afterKill).changed.reduce<Record<string, string[]>>((acc, line) => {
      const key = line.startsWith("worktrees") ? "worktrees" : line.startsWith("locks left") ? "locks" : "other";
      (acc[key] ??= []).push(line);
      return acc;
    }, {});
    // What stays after a kill: keen's own worktrees below .git/keen, locked against `git worktree prune`.
    expect(rest.other ?? []).toEqual([]);
    expect(afterKill.worktrees.split("\n").filter((l) => l.startsWith("worktree ")).slice(1).every((l) => l.includes("/.git/keen/worktrees/"))).toBe(true);
    expect(afterKill.locks.every((lock) => /^worktrees\/[^/]+\/locked$/.test(lock))).toBe(true);
    expect(worktrees).toBeDefined();
    await git(dir, "worktree", "prune");
    expect(repoState(dir).worktrees).toBe(afterKill.worktrees);
    const resumed = await keen(["run", "--last", "--repo", dir, "--json", "--no-sandbox"], env);
    expect(resumed.exitCode, resumed.stderr).toBe(0);
    const rb = parseNdjson(resumed.stdout).find((e) => e.type === "run.completed") as KeenEventOf<"run.completed">;
    expect((await git(dir, "ls-tree", "-r", "--name-only", rb.branch!)).split("\n")).toEqual(["README.md", "a.txt", "a2.txt"]);
    expect(stateDiff(before, repoState(dir)).changed).toEqual([]);
  });
});

describe("keen run --apply", { timeout: 180_000 }, () => {
  it("refuses a checkout dirty only in an untracked file the run also creates, leaving it byte-identical", async () => {
    const dir = await gitRepo({ "README.md": "# r\n" });
    await writeFile(join(dir, "keen-note.txt"), "the user's own note\n");
    const { result } = await sacredRun(dir, ["--apply"]);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/not applied: \S+ has uncommitted or untracked files \(keen-note\.txt\)/);
    expect(await readFile(join(dir, "keen-note.txt"), "utf8")).toBe("the user's own note\n");
  });

  it("refuses a conflict with what the user committed meanwhile: no MERGE_HEAD, no markers, nothing written", async () => {
    const dir = await gitRepo({ "README.md": "# r\n", "keen-note.txt": "base\n" });
    let committed = false;
    server = await startMessagesServer({
      policy: scriptedTreePolicy(single, {
        onRequest: async ({ phase }) => {
          if (!committed && phase === "complete_task") {
            committed = true;
            await sh(dir, "echo 'the user was here' > keen-note.txt && git commit -qam mine");
          }
        },
      }),
    });
    const before = { head: "", state: undefined as ReturnType<typeof repoState> | undefined };
    const env = { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url };
    const result = await keen(["run", single.instructions, "--repo", dir, "--json", "--no-sandbox", "--apply"], env);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/not applied: it conflicts with main; nothing was changed/);
    before.head = await git(dir, "rev-parse", "HEAD");
    expect(await git(dir, "log", "-1", "--format=%s")).toBe("mine");
    expect(await git(dir, "status", "--porcelain")).toBe("");
    expect(existsSync(join(dir, ".git", "MERGE_HEAD"))).toBe(false);
    expect(existsSync(join(dir, ".git", "ORIG_HEAD"))).toBe(false);
  });

  it("merges into main that moved on during the run, and refuses when another branch was checked out meanwhile", async () => {
    const dir = await gitRepo({ "README.md": "# r\n" });
    let step = "commit";
    server = await startMessagesServer({
      policy: scriptedTreePolicy(single, {
        onRequest: async ({ phase }) => {
          if (phase !== "complete_task") return;
          if (step === "commit") await sh(dir, "echo later > later.txt && git add later.txt && git commit -qm later");
          if (step === "switch") await sh(dir, "git switch -q --orphan elsewhere && git commit -q --allow-empty -m elsewhere");
          step = "done";
        },
      }),
    });
    const env = { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url };
    const first = await keen(["run", single.instructions, "--repo", dir, "--json", "--no-sandbox", "--apply"], env);
    expect(first.stderr).toMatch(/applied: merged keen\/[0-9a-f]{8} into main \(merge commit/);
    expect((await git(dir, "ls-tree", "-r", "--name-only", "HEAD")).split("\n")).toEqual(["README.md", "keen-note.txt", "later.txt"]);
    // A second run starts from main as it is now.
    await sh(dir, "git rm -q keen-note.txt && git commit -qm 'drop the note'");
    step = "switch";
    const before = repoState(dir);
    const second = await keen(["run", single.instructions, "--repo", dir, "--json", "--no-sandbox", "--apply"], env);
    const rb = (parseNdjson(second.stdout)[0] as KeenEventOf<"run.started">).branch;
    expect(await git(dir, "rev-parse", `${rb}~1`)).toBe(await git(dir, "rev-parse", "main"));
    expect(second.stderr).toMatch(/not applied: elsewhere in \S+ does not contain [0-9a-f]{12}, the commit the run started from/);
    const changed = stateDiff(before, repoState(dir)).changed;
    // Only what the user did meanwhile (the orphan branch) changed.
    expect(changed.every((line) => /^(git (own|common):(HEAD|logs\/HEAD|index)|refs|status|worktrees|file README\.md|file later\.txt)/.test(line)), changed.join("\n")).toBe(true);
    expect(existsSync(join(dir, ".git", "MERGE_HEAD"))).toBe(false);
  });
});

describe("resume re-attaches only the run's own branches", { timeout: 180_000 }, () => {
  it("refuses a snapshot whose branches name a user's branch, leaving that branch alone", async () => {
    let child: ReturnType<typeof keen> | undefined;
    const tree: ScriptedTask = { title: "Own", instructions: "Own", subtasks: [{ title: "A", instructions: "a", work: [write("a.txt", "a\n"), write("a2.txt", "a2\n")] }] };
    server = await startMessagesServer({
      policy: scriptedTreePolicy(tree, {
        onRequest: async ({ agent, phase, turn }) => {
          if (agent === "A" && phase === "complete_task" && turn === 1 && child) {
            child.kill("SIGKILL");
            child = undefined;
            await new Promise((resolve) => setTimeout(resolve, 300));
          }
        },
      }),
    });
    const dir = await gitRepo({ "README.md": "# r\n" });
    await sh(dir, "git branch feature");
    const env = { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url };
    child = keen(["run", "Own", "--repo", dir, "--json", "--no-sandbox"], env);
    const killed = await child;
    const rb = (parseNdjson(String(killed.stdout))[0] as KeenEventOf<"run.started">).branch;
    const snapshotPath = join(dir, ".git", "keen", "runs", `${(parseNdjson(String(killed.stdout))[0] as KeenEventOf<"run.started">).runId}.json`);
    const snapshot = await readFile(snapshotPath, "utf8");
    // The snapshot, edited to name the user's branch as the run's.
    await writeFile(snapshotPath, snapshot.split(`"${rb}"`).join('"feature"').split(`"${rb}-agents/`).join('"feature-agents/'));
    const before = repoState(dir);
    const resumed = await keen(["run", "--last", "--repo", dir, "--json", "--no-sandbox"], env);
    expect(resumed.exitCode).not.toBe(0);
    expect(resumed.stderr).toMatch(/feature/);
    expect(await git(dir, "rev-parse", "feature")).toBe(await git(dir, "rev-parse", "main"));
    expect(stateDiff(before, repoState(dir)).changed.filter((line) => !line.startsWith("worktrees") && !line.startsWith("locks"))).toEqual([]);
  });
});
