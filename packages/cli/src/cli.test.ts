import { access, mkdir, mkdtemp, readFile, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import { TaskSnapshot, type KeenEvent, type KeenEventOf } from "@keen/agent-core";
import { reply, startMessagesServer, type MessagesServer } from "@keen/agent-core/testing";
import type { Io } from "./cli-error.js";
import { scriptedTreePolicy, type ScriptedTask } from "./demo/scripted-tree.js";
import { main } from "./main.js";
import { branches, git, gitRepo, identity, keen, parseNdjson, snapshotFiles } from "./testing/keen-process.js";

const ofType = <T extends KeenEvent["type"]>(events: KeenEvent[], type: T) => events.filter((e): e is KeenEventOf<T> => e.type === type);
const write = (path: string, content: string) => reply.toolUse("write_file", { path, content });

/** Runs `main` in this process with captured output (for usage errors, which never start a run). */
async function inProcess(argv: string[], env: NodeJS.ProcessEnv = { ANTHROPIC_API_KEY: "k" }) {
  let stdout = "";
  let stderr = "";
  const io: Io = { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s), env, isTTY: false };
  const code = await main(argv, io);
  return { code, stdout, stderr };
}

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

describe("keen CLI usage", () => {
  it("prints help and exits 0", async () => {
    const result = await keen(["--help"]);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain("keen run");
    expect(result.stdout).toContain("--resume FILE");
    const runHelp = await inProcess(["run", "--help"]);
    for (const flag of ["--max-depth", "--max-children", "--max-agents", "--max-turns", "--token-budget", "--concurrency", "--validate", "--on-conflict", "--no-sandbox", "--sandbox-read", "--resume", "--snapshot", "--json"]) {
      expect(runHelp.stdout).toContain(flag);
    }
  });

  it("prints a command's help for keen help COMMAND, the same as COMMAND --help", async () => {
    for (const command of ["run", "runs", "demo"]) {
      const viaHelp = await inProcess(["help", command]);
      const viaFlag = await inProcess([command, "--help"]);
      expect(viaHelp.code).toBe(0);
      expect(viaHelp.stdout).toBe(viaFlag.stdout);
      expect(viaHelp.stdout).toMatch(new RegExp(`^Usage: keen ${command}\\b`));
    }
    expect((await inProcess(["help"])).stdout).toContain("keen help <command>");
  });

  it("refuses an unknown command and a bad flag from the real process with one line and exit 2", async () => {
    for (const args of [["frobnicate"], ["run", "x", "--max-depth", "deep"]]) {
      const result = await keen(args, { ANTHROPIC_API_KEY: "k" });
      expect(result.exitCode, args.join(" ")).toBe(2);
      expect(result.stderr.trim().split("\n")).toHaveLength(1);
      expect(result.stderr).toMatch(/^keen: /);
      expect(result.stdout).toBe("");
    }
  });

  it.each([
    [["run", "x", "--bogus"], /^keen: unknown option --bogus \(see keen help run\)$/m],
    [["run", "x", "--max-dept", "2"], /unknown option --max-dept \(did you mean --max-depth\?\)/],
    [["run", "x", "--no-sandbx"], /unknown option --no-sandbx \(did you mean --no-sandbox\?\)/],
    [["run", "x", "--validat", "npm test"], /did you mean --validate\?/],
    [["demo", "--jsno"], /unknown option --jsno \(did you mean --json\?\) \(see keen help demo\)/],
    [["runs", "--prnue"], /did you mean --prune\?/],
    [["runs", "extra"], /keen runs takes no arguments besides its options, got "extra"/],
    [["rn", "x"], /unknown command "rn" \(did you mean run\?\)/],
    [["help", "bogus"], /no help for "bogus": the commands are run, runs, demo/],
    [["run", "x", "--max-depth", "-1"], /^keen: --max-depth must be a non-negative integer, got "-1"$/m],
    [["run", "x", "--max-agents", "-5"], /--max-agents must be a positive integer, got "-5"/],
    [["run", "x", "--token-budget", "-1e3"], /--token-budget must be a positive integer, got "-1e3"/],
    [["run", "x", "--concurrency", "-"], /--concurrency must be a positive integer, got "-"/],
    [["run", "x", "--max-depth", "99999999999999999999"], /--max-depth must be a non-negative integer/],
    [["run", "x", "--max-retries", "-1"], /--max-retries must be a non-negative integer, got "-1"/],
    [["run", "--resume", "a.json", "--last"], /--resume and --last both say which run to continue; give one/],
    [["run", "-", "more"], /give the vision either as text or as "-"/],
    [["run", "--repo", "."], /missing the vision/],
    [["run", "x", "--max-depth", "1.5"], /--max-depth must be a non-negative integer, got "1.5"/],
    [["run", "x", "--max-depth=-1"], /--max-depth must be a non-negative integer, got "-1"/],
    [["run", "x", "--max-children", "0"], /--max-children must be a positive integer, got "0"/],
    [["run", "x", "--max-agents", "ten"], /--max-agents must be a positive integer/],
    [["run", "x", "--max-turns", "0"], /--max-turns must be a positive integer/],
    [["run", "x", "--token-budget", "1e6"], /--token-budget must be a positive integer, got "1e6"/],
    [["run", "x", "--concurrency", "0"], /--concurrency must be a positive integer/],
    [["run", "x", "--on-conflict", "merge"], /--on-conflict must be resolve or rollback, got "merge"/],
    [["run", "x", "--validate", " "], /--validate needs a command/],
    [["run", "x", "--sandbox", "--no-sandbox"], /contradict/],
    [["run", "x", "--no-sandbox", "--sandbox-read", "/opt"], /means nothing with --no-sandbox/],
    [["run", "x", "--base", "main", "--include-uncommitted"], /cannot start from another --base/],
    [["run", "x", "--max-depth"], /--max-depth needs a value \(argument missing\)/],
    [["run", "--resume", "/nonexistent/run.json"], /cannot read snapshot \/nonexistent\/run\.json: no such file/],
    [["run", "again", "--resume", "run.json"], /give no vision with it/],
    [["run", "--resume", "run.json", "--max-depth", "3"], /--max-depth is fixed by the snapshot/],
    [["demo", "--pace", "fast"], /--pace must be a number of milliseconds/],
  ])("keen %j: one-line usage error, exit 2", async (argv, message) => {
    const result = await inProcess(argv);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(message);
    expect(result.stderr).toMatch(/^keen: [^\n]+\n$/);
    expect(result.stdout).toBe("");
  });

  it("refuses a file that is not a snapshot, naming what is wrong", async () => {
    const dir = await mkdtemp(join(tmpdir(), "keen-snap-"));
    await writeFile(join(dir, "bad.json"), JSON.stringify({ version: 1, runId: "r" }));
    await writeFile(join(dir, "text.json"), "not json");
    expect((await inProcess(["run", "--resume", join(dir, "bad.json")])).stderr).toMatch(/bad\.json is not a keen run snapshot \(vision: /);
    expect((await inProcess(["run", "--resume", join(dir, "text.json")])).stderr).toMatch(/text\.json is not a keen run snapshot \(not valid JSON\)/);
  });

  it("says clearly when the API key is missing", async () => {
    const result = await keen(["run", "do it", "--repo", "."]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr.trim()).toBe("keen: ANTHROPIC_API_KEY is not set (export it, or try the offline `keen demo`)");
  });

  it("refuses a folder that is not a git repository", async () => {
    const dir = await mkdtemp(join(tmpdir(), "keen-notgit-"));
    const result = await inProcess(["run", "do it", "--repo", dir, "--no-sandbox"]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/not a git repository/i);
  });
});

describe("keen run: the full lifecycle against the offline Messages API", { timeout: 120_000 }, () => {
  it("runs a three-level tree, prints only NDJSON on stdout, merges the branches and keeps a snapshot", async () => {
    const tree: ScriptedTask = {
      title: "Docs and code",
      instructions: "Docs and code",
      subtasks: [
        {
          title: "Docs",
          instructions: "Write the docs index.",
          subtasks: [{ title: "Guide", instructions: "Write the guide.", work: [write("docs/guide.md", "# Guide\n")] }],
          work: [write("docs/index.md", "# Docs\n- guide.md\n")],
        },
        { title: "Code", instructions: "Write the feature.", work: [write("src/feature.js", "export const feature = 1;\n")] },
      ],
      summary: "Everything merged.",
    };
    server = await startMessagesServer({ policy: scriptedTreePolicy(tree) });
    const dir = await gitRepo();
    const result = await keen(["run", "Docs and code", "--repo", dir, "--json", "--no-sandbox"], { ANTHROPIC_API_KEY: "test-key", ANTHROPIC_BASE_URL: server.url });
    expect(result.exitCode, result.stderr).toBe(0);

    const events = parseNdjson(result.stdout);
    expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i));
    expect(events[0]!.type).toBe("run.started");
    // The run works on its own branch; children beside it.
    const rb = (events[0] as KeenEventOf<"run.started">).branch;
    expect(rb).toMatch(/^keen\/[0-9a-f]{8}$/);
    const kid = (name: string) => `${rb}-agents/${name}`;
    expect(events.at(-1)).toMatchObject({ type: "run.completed", status: "success", summary: "Everything merged." });
    // run.completed names the snapshot file keen wrote: the finished run's state is there.
    const snapshotFile = ofType(events, "run.completed")[0]!.snapshot!;
    expect(snapshotFile).toContain(join(".git", "keen", "runs"));
    expect(TaskSnapshot.parse(JSON.parse(await readFile(snapshotFile, "utf8"))).runId).toBe(events[0]!.runId);
    expect(ofType(events, "agent.spawned").map((e) => [e.agentId, e.parentId, e.branch, e.depth])).toEqual([
      ["root", null, rb, 0],
      ["A", "root", kid("summon-A"), 1],
      ["B", "root", kid("summon-B"), 1],
      ["A-A", "A", kid("summon-A-A"), 2],
    ]);
    expect(ofType(events, "git.merge").map((e) => [e.branch, e.into, e.result])).toEqual([
      [kid("summon-A-A"), kid("summon-A"), "merged"],
      [kid("summon-A"), rb, "merged"],
      [kid("summon-B"), rb, "merged"],
    ]);

    expect(await branches(dir)).toEqual(["main", rb, kid("summon-A"), kid("summon-A-A"), kid("summon-B")].sort());
    expect(await git(dir, "ls-tree", "-r", "--name-only", rb)).toBe("README.md\ndocs/guide.md\ndocs/index.md\nsrc/feature.js");
    expect(await git(dir, "ls-tree", "-r", "--name-only", "main")).toBe("README.md");
    expect(await git(dir, "status", "--porcelain")).toBe("");
    expect((await git(dir, "worktree", "list")).split("\n")).toHaveLength(1);

    // The snapshot sits in the git directory, is named after the run, and ends with the finished tree.
    const [snapshotPath, ...others] = await snapshotFiles(dir);
    expect(others).toEqual([]);
    expect(snapshotPath).toContain(`${events[0]!.runId}.json`);
    expect(result.stderr.split("\n")).toEqual([
      `keen: run ${events[0]!.runId} · snapshot ${snapshotPath} (resume: keen run --resume ${snapshotPath}) · sandbox off`,
      expect.stringMatching(new RegExp(`^keen: review: git -C ${dir} diff [0-9a-f]{12}\\.\\.\\.${rb}$`)),
      `keen: take it: git -C ${dir} merge ${rb}`,
    ]);
    const snapshot = TaskSnapshot.parse(JSON.parse(await readFile(snapshotPath!, "utf8")));
    expect(snapshot.agents.map((a) => [a.id, a.phase, a.status])).toEqual([
      ["root", "DONE", "success"],
      ["A", "DONE", "success"],
      ["B", "DONE", "success"],
      ["A-A", "DONE", "success"],
    ]);
    expect(snapshot.nextSeq).toBe(events.at(-1)!.seq);

    // A finished run cannot be resumed again.
    const again = await inProcess(["run", "--resume", snapshotPath!, "--no-sandbox"]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/already finished \(success\); nothing to resume/);
  });

  it("honours --max-depth, --max-children, --concurrency, --validate, --on-conflict rollback and --snapshot", async () => {
    const order: string[] = [];
    const tree: ScriptedTask = {
      title: "Three ways",
      instructions: "Three ways",
      subtasks: [
        // A asks to plan, but depth 1 is the limit: it must do the work itself.
        { title: "One", instructions: "Write one.", subtasks: [{ title: "Deeper", instructions: "Never runs." }], work: [write("shared.txt", "one\n")] },
        { title: "Two", instructions: "Write two.", work: [write("shared.txt", "two\n")] },
        { title: "Three", instructions: "Never runs either." },
      ],
    };
    server = await startMessagesServer({ policy: scriptedTreePolicy(tree, { onRequest: ({ agent }) => void order.push(agent) }) });
    const dir = await gitRepo({ "shared.txt": "base\n" });
    const snapshotPath = join(await mkdtemp(join(tmpdir(), "keen-snapshot-")), "nested", "run.json");
    const args = ["run", "Three ways", "--repo", dir, "--json", "--no-sandbox", "--max-depth", "1", "--max-children", "2", "--concurrency", "1"];
    const result = await keen([...args, "--validate", "test -f shared.txt", "--on-conflict", "rollback", "--snapshot", snapshotPath], {
      ANTHROPIC_API_KEY: "k",
      ANTHROPIC_BASE_URL: server.url,
    });
    expect(result.exitCode, result.stderr).toBe(0);
    const events = parseNdjson(result.stdout);
    const rb = (events[0] as KeenEventOf<"run.started">).branch;
    const kid = (name: string) => `${rb}-agents/${name}`;
    expect(ofType(events, "limit.reached").map((e) => e.limit)).toEqual(["maxChildren", "maxDepth"]);
    expect(ofType(events, "git.merge").map((e) => [e.branch, e.result, e.conflictedFiles])).toEqual([
      [kid("summon-A"), "merged", []],
      [kid("summon-B"), "rolled_back", ["shared.txt"]],
    ]);
    expect(ofType(events, "validation.result").every((e) => e.command === "test -f shared.txt" && e.passed)).toBe(true);
    expect(ofType(events, "validation.result").length).toBeGreaterThanOrEqual(3);
    // One child at a time: every request of A comes before the first of B.
    expect(order.lastIndexOf("A")).toBeLessThan(order.indexOf("B"));
    expect(await branches(dir)).toEqual(["main", rb, kid("summon-A"), kid("summon-B")].sort());
    expect(await git(dir, "show", `${rb}:shared.txt`)).toBe("one");
    expect(await git(dir, "show", `${kid("summon-B")}:shared.txt`)).toBe("two");
    expect(await git(dir, "show", "main:shared.txt")).toBe("base");
    const snapshot = TaskSnapshot.parse(JSON.parse(await readFile(snapshotPath, "utf8")));
    expect(snapshot.limits).toMatchObject({ maxDepth: 1, maxChildren: 2 });
    expect(snapshot).toMatchObject({ maxConcurrency: 1, onConflict: "rollback", validation: { command: "test -f shared.txt" } });
  });

  it("exits 1 with a one-line reason when the task fails (a spent token budget), and stops at --max-agents", async () => {
    const tree: ScriptedTask = {
      title: "Budget",
      instructions: "Budget",
      subtasks: [
        { title: "Busy", instructions: "Look around a lot.", work: [reply.toolUse("list_files", {}), reply.toolUse("list_files", {}), reply.toolUse("list_files", {})] },
        { title: "Never", instructions: "Not enough room for this one." },
      ],
    };
    server = await startMessagesServer({ policy: scriptedTreePolicy(tree) });
    const dir = await gitRepo();
    // Enough for the root's two requests and the child's first (each carries every tool and the overview), not more.
    const result = await keen(["run", "Budget", "--repo", dir, "--no-sandbox", "--max-agents", "2", "--token-budget", "6000"], {
      ANTHROPIC_API_KEY: "k",
      ANTHROPIC_BASE_URL: server.url,
      KEEN_FORCE_TTY: "0",
    });
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toBe("keen: task failed: The token budget of 6000 tokens was spent");
    // Plain progress lines without a terminal.
    expect(result.stdout).toContain("limit maxAgents reached");
    expect(result.stdout).toContain("limit tokenBudget reached");
    expect(result.stdout).toMatch(/^\[A\] spawned by root on keen\/[0-9a-f]{8}-agents\/summon-A \(depth 1\): Busy$/m);
    expect(result.stdout).not.toContain("\x1b[");
    expect((await branches(dir)).map((b) => b.replace(/^keen\/[0-9a-f]{8}/, "keen/ID"))).toEqual(["keen/ID", "keen/ID-agents/summon-A", "main"]);
  });

  it("fails cleanly with a one-line reason when the model refuses the key", async () => {
    server = await startMessagesServer({ script: [reply.error(401, "authentication_error", "invalid x-api-key")] });
    const dir = await gitRepo();
    const result = await keen(["run", "anything", "--repo", dir, "--no-sandbox"], { ANTHROPIC_API_KEY: "bad", ANTHROPIC_BASE_URL: server.url });
    expect(result.exitCode).toBe(1);
    expect(result.stderr.trim().split("\n")).toHaveLength(1);
    expect(result.stderr).toMatch(/^keen: task (error|failed): .*401/);
  });
});

describe("keen run: the vision from stdin, the endpoint check, the closing screen", { timeout: 120_000 }, () => {
  it("reads the vision from standard input with keen run -", async () => {
    server = await startMessagesServer({ policy: scriptedTreePolicy({ title: "Stdin", instructions: "Stdin" }) });
    const dir = await gitRepo();
    const vision = "Add a CHANGELOG\n\nKeep it short; mention \"-\" flags.\n";
    const result = await keen(["run", "-", "--repo", dir, "--json", "--no-sandbox"], { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url }, { input: vision });
    expect(result.exitCode, result.stderr).toBe(0);
    expect(parseNdjson(result.stdout)[0]).toMatchObject({ type: "run.started", vision: vision.trim() });

    const empty = await keen(["run", "-", "--repo", dir, "--no-sandbox"], { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url }, { input: " \n" });
    expect(empty.exitCode).toBe(2);
    expect(empty.stderr.trim()).toBe('keen: the vision read from standard input ("-") is empty');
  });

  it("ends with exit 3 and a line naming the URL when the key is refused or the endpoint is unreachable, before writing anything", async () => {
    server = await startMessagesServer({ apiKey: "the-right-key", policy: scriptedTreePolicy({ title: "x", instructions: "x" }) });
    const dir = await gitRepo();
    const refused = await keen(["run", "anything", "--repo", dir, "--no-sandbox"], { ANTHROPIC_API_KEY: "wrong", ANTHROPIC_BASE_URL: server.url });
    expect(refused.exitCode).toBe(3);
    expect(refused.stderr.trim()).toBe(`keen: the model endpoint ${server.url} refused the API key (401: invalid x-api-key)`);
    expect(refused.stdout).toBe("");
    // One cheap request, and no model turn.
    expect(server.requests.map((r) => [r.path, r.status])).toEqual([["/v1/messages/count_tokens", 401]]);

    // A port nothing listens on.
    const closed = await startMessagesServer({ script: [] });
    const deadUrl = closed.url;
    await closed.close();
    const unreachable = await keen(["run", "anything", "--repo", dir, "--no-sandbox"], { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: deadUrl });
    expect(unreachable.exitCode).toBe(3);
    expect(unreachable.stderr.trim()).toMatch(new RegExp(`^keen: cannot reach the model endpoint ${deadUrl.replace(/[.]/g, "\\.")} \\(ECONNREFUSED\\)$`));
    // Neither wrote a snapshot, a record or a branch.
    expect(await snapshotFiles(dir).catch(() => [])).toEqual([]);
    // Opening the repository may leave keen's lock folder; nothing of a run is in it.
    expect(await access(join(dir, ".git", "keen", "runs")).then(() => true, () => false)).toBe(false);
    expect(await branches(dir)).toEqual(["main"]);
  });

  it("ends with the agent's summary and a diff stat of what the run changed", async () => {
    const tree: ScriptedTask = {
      title: "Two files",
      instructions: "Two files",
      subtasks: [{ title: "Docs", instructions: "Write docs.", work: [write("docs/guide.md", "# Guide\nline\n")] }],
      work: [write("src/app.js", "export const app = 1;\n")],
      summary: "Added the guide and the app module.\nBoth are merged.",
    };
    server = await startMessagesServer({ policy: scriptedTreePolicy(tree) });
    const dir = await gitRepo();
    const result = await keen(["run", "Two files", "--repo", dir, "--no-sandbox"], { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url, KEEN_FORCE_TTY: "0" });
    expect(result.exitCode, result.stderr).toBe(0);
    const closing = result.stdout.slice(result.stdout.lastIndexOf("\nsuccess in "));
    expect(closing).toContain("Added the guide and the app module.\nBoth are merged.");
    expect(closing).toMatch(/^ {2}docs\/guide\.md \| 2 \+\+$/m);
    expect(closing).toMatch(/^ {2}src\/app\.js +\| 1 \+$/m);
    expect(closing).toMatch(/^ {2}2 files changed, 3 insertions\(\+\)$/m);
  });
});

describe("keen run: the run branch and taking its result", { timeout: 120_000 }, () => {
  const hello: ScriptedTask = { title: "Hello", instructions: "Hello", work: [write("hello.txt", "hello\n")], summary: "Wrote hello.txt." };

  it("leaves a dirty checkout byte-identical, works on keen/<id>, and says how to take the result; --apply refuses the dirty checkout", async () => {
    server = await startMessagesServer({ policy: scriptedTreePolicy(hello) });
    const dir = await gitRepo();
    await writeFile(join(dir, "README.md"), "# my work in progress\n");
    await writeFile(join(dir, ".env.local"), "ANTHROPIC_API_KEY=sk-secret\n");
    const head = await git(dir, "rev-parse", "HEAD");
    const status = await git(dir, "status", "--porcelain");
    const env = { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url, KEEN_FORCE_TTY: "0" };
    const result = await keen(["run", "Write hello.txt", "--repo", dir, "--no-sandbox", "--max-depth", "0", "--apply"], env);
    expect(result.exitCode, result.stderr).toBe(0);
    const runBranch = /take it with: git -C \S+ merge (keen\/\S+)/.exec(result.stdout)?.[1];
    expect(runBranch, result.stdout).toMatch(/^keen\/[0-9a-f]{8}/);
    expect(result.stdout).toContain(`review: git -C ${dir} diff ${head.slice(0, 12)}...${runBranch}`);
    expect(result.stdout).toContain(`not applied: ${dir} has uncommitted or untracked files (README.md, .env.local); commit or stash them, then take it with: git -C ${dir} merge ${runBranch}`);
    // The user's checkout: same branch, same commit, same status, same bytes.
    expect(await git(dir, "branch", "--show-current")).toBe("main");
    expect(await git(dir, "rev-parse", "HEAD")).toBe(head);
    expect(await git(dir, "status", "--porcelain")).toBe(status);
    expect(await readFile(join(dir, "README.md"), "utf8")).toBe("# my work in progress\n");
    expect(await readFile(join(dir, ".env.local"), "utf8")).toBe("ANTHROPIC_API_KEY=sk-secret\n");
    // The result is on the run branch, without the user's uncommitted files.
    expect(await git(dir, "ls-tree", "-r", "--name-only", runBranch!)).toBe("README.md\nhello.txt");
    expect(await git(dir, "show", `${runBranch}:README.md`)).toBe("# sample");
    // keen runs shows it with its branch.
    const listed = JSON.parse((await inProcess(["runs", "--repo", dir, "--json"])).stdout);
    expect(listed).toMatchObject({ status: "success", branch: runBranch });
  });

  it("--apply merges the run branch into a clean checkout; --branch names the branch and is never reused", async () => {
    server = await startMessagesServer({ policy: scriptedTreePolicy(hello) });
    const dir = await gitRepo();
    const first = await git(dir, "rev-parse", "HEAD");
    await writeFile(join(dir, "later.txt"), "later\n");
    await execa("git", ["add", "later.txt"], { cwd: dir });
    await execa("git", ["commit", "-qm", "later"], { cwd: dir, env: identity });
    const env = { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url, KEEN_FORCE_TTY: "0" };

    const chosen = await keen(["run", "Write hello.txt", "--repo", dir, "--no-sandbox", "--max-depth", "0", "--branch", "feature/hello"], env);
    expect(chosen.exitCode, chosen.stderr).toBe(0);
    expect(await git(dir, "ls-tree", "-r", "--name-only", "feature/hello")).toBe("README.md\nhello.txt\nlater.txt");
    // --base must name a commit; the check runs before anything is written.
    const badBase = await keen(["run", "Write hello.txt", "--repo", dir, "--no-sandbox", "--base", "no-such-ref"], env);
    expect(badBase.exitCode).toBe(2);
    expect(badBase.stderr.trim()).toBe(`keen: --base no-such-ref is not a commit in ${dir}`);
    expect(first).toMatch(/^[0-9a-f]{40}$/);
    expect(chosen.stdout).toContain(`take it: git -C ${dir} merge feature/hello`);
    // An existing branch is never reused.
    const again = await keen(["run", "Write hello.txt", "--repo", dir, "--no-sandbox", "--max-depth", "0", "--branch", "feature/hello"], env);
    expect(again.exitCode).toBe(2);
    expect(again.stderr.trim()).toBe(`keen: branch feature/hello already exists in ${dir}; a run never reuses a branch: pick another --branch, or delete that one`);
    expect(await git(dir, "ls-tree", "-r", "--name-only", "feature/hello")).toBe("README.md\nhello.txt\nlater.txt");

    const applied = await keen(["run", "Write hello.txt", "--repo", dir, "--no-sandbox", "--max-depth", "0", "--apply"], env);
    expect(applied.exitCode, applied.stderr).toBe(0);
    expect(applied.stdout).toMatch(/^applied: merged keen\/\S+ into main \((fast-forward|merge commit), now at [0-9a-f]{10}\)$/m);
    expect(await readFile(join(dir, "hello.txt"), "utf8")).toBe("hello\n");
    expect(await git(dir, "status", "--porcelain")).toBe("");
  });

  it("a second run after main moved forks every child from the new main, never from the first run's branches", async () => {
    const pair: ScriptedTask = {
      title: "Pair",
      instructions: "Pair",
      subtasks: [
        { title: "One", instructions: "Write one.", work: [write("one.txt", "one\n")] },
        { title: "Two", instructions: "Write two.", work: [write("two.txt", "two\n")] },
      ],
    };
    server = await startMessagesServer({ policy: scriptedTreePolicy(pair) });
    const dir = await gitRepo();
    const env = { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url };
    const firstRun = await keen(["run", "Pair", "--repo", dir, "--no-sandbox", "--json"], env);
    expect(firstRun.exitCode, firstRun.stderr).toBe(0);
    await writeFile(join(dir, "moved.txt"), "new on main\n");
    await execa("git", ["add", "moved.txt"], { cwd: dir });
    await execa("git", ["commit", "-qm", "main moved"], { cwd: dir, env: identity });
    const moved = await git(dir, "rev-parse", "HEAD");
    const secondRun = await keen(["run", "Pair", "--repo", dir, "--no-sandbox", "--json"], env);
    expect(secondRun.exitCode, secondRun.stderr).toBe(0);

    const spawnedIn = (stdout: string) => ofType(parseNdjson(stdout), "agent.spawned").map((e) => e.branch);
    const [firstRoot, ...firstChildren] = spawnedIn(firstRun.stdout);
    const [secondRoot, ...secondChildren] = spawnedIn(secondRun.stdout);
    expect(secondRoot).not.toBe(firstRoot);
    expect(secondChildren).toEqual([`${secondRoot}-agents/summon-A`, `${secondRoot}-agents/summon-B`]);
    for (const branch of [secondRoot!, ...secondChildren]) {
      expect((await execa("git", ["merge-base", "--is-ancestor", moved, branch], { cwd: dir, reject: false })).exitCode, branch).toBe(0);
    }
    // The first run's branches are as it left them.
    for (const branch of firstChildren) expect(await git(dir, "ls-tree", "--name-only", branch)).not.toContain("moved.txt");
    expect(await git(dir, "rev-parse", "main")).toBe(moved);
    expect(await git(dir, "status", "--porcelain")).toBe("");
  });

  it("--max-budget-usd stops every agent once the run has cost that much", async () => {
    const busy: ScriptedTask = { title: "Busy", instructions: "Busy", work: Array.from({ length: 30 }, () => reply.toolUse("list_files", {})) };
    server = await startMessagesServer({ policy: scriptedTreePolicy(busy) });
    const dir = await gitRepo();
    const result = await keen(["run", "Busy", "--repo", dir, "--no-sandbox", "--max-depth", "0", "--max-budget-usd", "0.01", "--json"], { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url });
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain("keen: task failed: The budget of $0.01 was spent");
    const completed = ofType(parseNdjson(result.stdout), "run.completed")[0]!;
    expect(completed.status).toBe("failed");
    expect(completed.error?.code).toBe("cost_budget");
    expect(completed.costUsd).toBeGreaterThan(0);
    expect(completed.costUsd).toBeLessThanOrEqual(0.01 * 1.5);
    expect(server.requests.filter((r) => r.path === "/v1/messages").length).toBeLessThan(31);
  });
});

describe("keen run --max-retries", { timeout: 120_000 }, () => {
  /** The scripted tree, after `faults` overloaded answers (529) to the first model requests. */
  function overloadedThen(faults: number) {
    const policy = scriptedTreePolicy({ title: "Retry", instructions: "Retry" });
    let failed = 0;
    return startMessagesServer({
      policy: (request, context) => (failed++ < faults ? reply.error(529, "overloaded_error", "Overloaded") : policy(request, context)),
    });
  }
  const messages = (s: MessagesServer) => s.requests.filter((r) => r.path === "/v1/messages");

  it("retries an overloaded request as often as asked, and not at all with 0", async () => {
    server = await overloadedThen(2);
    const retried = await keen(["run", "Retry", "--repo", await gitRepo(), "--json", "--no-sandbox", "--max-retries", "2"], { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url });
    expect(retried.exitCode, retried.stderr).toBe(0);
    expect(parseNdjson(retried.stdout).filter((e) => e.type === "model.retry")).toHaveLength(2);
    expect(messages(server).map((r) => r.status).slice(0, 3)).toEqual([529, 529, 200]);
    await server.close();

    server = await overloadedThen(1);
    const none = await keen(["run", "Retry", "--repo", await gitRepo(), "--json", "--no-sandbox", "--max-retries", "0"], { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url });
    expect(none.exitCode).not.toBe(0);
    expect(parseNdjson(none.stdout).filter((e) => e.type === "model.retry")).toEqual([]);
    expect(messages(server).map((r) => r.status)).toEqual([529]);
  });
});

describe("keen run: the sandbox", { timeout: 120_000 }, () => {
  const exists = (path: string) => access(path).then(() => true, () => false);

  it("runs commands under bubblewrap by default: a validation command cannot write outside the worktree", async () => {
    server = await startMessagesServer({ policy: scriptedTreePolicy({ title: "Check", instructions: "Check" }) });
    const env = { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url, KEEN_FORCE_TTY: "0" };
    const outside = await mkdtemp(join(tmpdir(), "keen-outside-"));
    const validate = `echo escaped > ${join(outside, "escape.txt")}; exit 0`;

    const sandboxed = await keen(["run", "Check", "--repo", await gitRepo(), "--validate", validate], env);
    expect(sandboxed.exitCode, sandboxed.stderr).toBe(0);
    expect(sandboxed.stdout).toContain("validation passed");
    expect(sandboxed.stdout).not.toContain("sandbox off");
    expect(await exists(join(outside, "escape.txt"))).toBe(false);

    // The same command without the sandbox does write there: the check above can fail.
    const open = await keen(["run", "Check", "--repo", await gitRepo(), "--validate", validate, "--no-sandbox"], env);
    expect(open.exitCode, open.stderr).toBe(0);
    expect(open.stdout).toContain("sandbox off");
    expect(await readFile(join(outside, "escape.txt"), "utf8")).toBe("escaped\n");
  });

  it("refuses to run unsandboxed silently where bubblewrap is missing: one line, exit 2, --no-sandbox named", async () => {
    // A PATH with git but no bwrap.
    const bin = await mkdtemp(join(tmpdir(), "keen-bin-"));
    await mkdir(bin, { recursive: true });
    await symlink((await execa("sh", ["-c", "command -v git"])).stdout.trim(), join(bin, "git"));
    const repo = await gitRepo();
    const result = await keen(["run", "Check", "--repo", repo], { ANTHROPIC_API_KEY: "k", PATH: bin });
    expect(result.exitCode).toBe(2);
    expect(result.stderr.trim().split("\n")).toHaveLength(1);
    expect(result.stderr).toMatch(/^keen: cannot sandbox commands here \(.+\); install bubblewrap, or pass --no-sandbox to run them unsandboxed/);
    expect(await snapshotFiles(repo).catch(() => [])).toEqual([]);
  });
});
