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
import { branches, git, gitRepo, keen, parseNdjson, snapshotFiles } from "./testing/keen-process.js";

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
    [["run", "x", "--bogus"], /Unknown option '--bogus'/],
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
    [["run", "x", "--max-depth"], /argument missing/],
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
    expect(events.at(-1)).toMatchObject({ type: "run.completed", status: "success", summary: "Everything merged." });
    expect(ofType(events, "agent.spawned").map((e) => [e.agentId, e.parentId, e.branch, e.depth])).toEqual([
      ["root", null, "main", 0],
      ["A", "root", "summon-A", 1],
      ["B", "root", "summon-B", 1],
      ["A-A", "A", "summon-A-A", 2],
    ]);
    expect(ofType(events, "git.merge").map((e) => [e.branch, e.into, e.result])).toEqual([
      ["summon-A-A", "summon-A", "merged"],
      ["summon-A", "main", "merged"],
      ["summon-B", "main", "merged"],
    ]);

    expect(await branches(dir)).toEqual(["main", "summon-A", "summon-A-A", "summon-B"]);
    expect(await git(dir, "ls-tree", "-r", "--name-only", "main")).toBe("README.md\ndocs/guide.md\ndocs/index.md\nsrc/feature.js");
    expect(await git(dir, "status", "--porcelain")).toBe("");
    expect((await git(dir, "worktree", "list")).split("\n")).toHaveLength(1);

    // The snapshot sits in the git directory, is named after the run, and ends with the finished tree.
    const [snapshotPath, ...others] = await snapshotFiles(dir);
    expect(others).toEqual([]);
    expect(snapshotPath).toContain(`${events[0]!.runId}.json`);
    expect(result.stderr).toBe(`keen: run ${events[0]!.runId} · snapshot ${snapshotPath} (resume: keen run --resume ${snapshotPath}) · sandbox off`);
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
    expect(ofType(events, "limit.reached").map((e) => e.limit)).toEqual(["maxChildren", "maxDepth"]);
    expect(ofType(events, "git.merge").map((e) => [e.branch, e.result, e.conflictedFiles])).toEqual([
      ["summon-A", "merged", []],
      ["summon-B", "rolled_back", ["shared.txt"]],
    ]);
    expect(ofType(events, "validation.result").every((e) => e.command === "test -f shared.txt" && e.passed)).toBe(true);
    expect(ofType(events, "validation.result").length).toBeGreaterThanOrEqual(3);
    // One child at a time: every request of A comes before the first of B.
    expect(order.lastIndexOf("A")).toBeLessThan(order.indexOf("B"));
    expect(await branches(dir)).toEqual(["main", "summon-A", "summon-B"]);
    expect(await git(dir, "show", "main:shared.txt")).toBe("one");
    expect(await git(dir, "show", "summon-B:shared.txt")).toBe("two");
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
    const result = await keen(["run", "Budget", "--repo", dir, "--no-sandbox", "--max-agents", "2", "--token-budget", "2500"], {
      ANTHROPIC_API_KEY: "k",
      ANTHROPIC_BASE_URL: server.url,
      KEEN_FORCE_TTY: "0",
    });
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toBe("keen: task failed: The token budget of 2500 tokens was spent");
    // Plain progress lines without a terminal.
    expect(result.stdout).toContain("limit maxAgents reached");
    expect(result.stdout).toContain("limit tokenBudget reached");
    expect(result.stdout).toContain("[A] spawned by root on summon-A (depth 1): Busy");
    expect(result.stdout).not.toContain("\x1b[");
    expect(await branches(dir)).toEqual(["main", "summon-A"]);
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
