import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import type { KeenEvent, KeenEventOf } from "@keen/agent-core";
import { branches, git, keen, keenEntry, parseNdjson, repoRoot } from "./testing/keen-process.js";
import { visibleWidth } from "./tree/tree-view.js";

const ofType = <T extends KeenEvent["type"]>(events: KeenEvent[], type: T) => events.filter((e): e is KeenEventOf<T> => e.type === type);
const demoDir = async () => join(await mkdtemp(join(tmpdir(), "keen-demo-test-")), "repo");

describe("keen demo", { timeout: 120_000 }, () => {
  it("drives a three-level tree offline: two children, a grandchild, a conflict resolved by the parent, validation passing", async () => {
    const dir = await demoDir();
    const result = await keen(["demo", "--dir", dir, "--json"]);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stderr).toContain("commands run without the sandbox");

    const events = parseNdjson(result.stdout);
    expect(events.at(-1)).toMatchObject({ type: "run.completed", status: "success" });
    expect(ofType(events, "agent.spawned").map((e) => [e.agentId, e.parentId, e.branch])).toEqual([
      ["root", null, "main"],
      ["A", "root", "summon-A"],
      ["B", "root", "summon-B"],
      ["A-A", "A", "summon-A-A"],
    ]);
    expect(ofType(events, "git.merge").map((e) => [e.branch, e.into, e.result, e.conflictedFiles])).toEqual([
      ["summon-A-A", "summon-A", "merged", []],
      ["summon-A", "main", "merged", []],
      ["summon-B", "main", "resolved", ["README.md"]],
    ]);
    const validations = ofType(events, "validation.result");
    expect(validations.length).toBeGreaterThanOrEqual(6);
    expect(validations.every((v) => v.command === "node --test" && v.passed)).toBe(true);

    // The repository holds the whole tree: every branch, main with both children's work merged.
    expect(await branches(dir)).toEqual(["main", "summon-A", "summon-A-A", "summon-B"]);
    const readme = await readFile(join(dir, "README.md"), "utf8");
    expect(readme).toContain('greet("Ada"); // "Hello, Ada!"');
    expect(readme).toContain('farewell("Ada"); // "Goodbye, Ada!"');
    expect(readme).not.toMatch(/^(<{7}|={7}|>{7})/m);
    expect(await git(dir, "ls-tree", "-r", "--name-only", "main")).toContain("test/greet.test.js");
    const merges = (await git(dir, "log", "--merges", "--format=%s", "main")).split("\n");
    expect(merges).toEqual(expect.arrayContaining(["Merge summon-A: Greeting: test and docs", expect.stringMatching(/^Merge summon-B: Farewell function/)]));
    expect(await git(dir, "log", "--merges", "--format=%s", "summon-A")).toBe("Merge summon-A-A: Test greet()");
    expect(await git(dir, "status", "--porcelain")).toBe("");
    const tests = await execa("node", ["--test"], { cwd: dir, reject: false });
    expect(tests.exitCode, tests.stdout).toBe(0);
    expect(tests.stdout).toMatch(/# pass 2/);
  });

  it("prints progress lines and where the result is when stdout is not a terminal", async () => {
    const dir = await demoDir();
    const result = await keen(["demo", "--dir", dir], { KEEN_FORCE_TTY: "0" });
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stderr).toBe("");
    expect(result.stdout).not.toContain("\x1b[");
    for (const line of [
      `keen demo: a scripted model on a sample repository at ${dir} (offline; commands run without the sandbox because the script only edits files)`,
      "[A-A] spawned by A on summon-A-A (depth 2): Test greet()",
      "[A] merge summon-A-A into summon-A: merged",
      "merge summon-B into main: merged, conflict resolved (conflict in README.md)",
      "validation passed: node --test",
      "branch main; child branches: summon-A (merged), summon-B (resolved), summon-A-A (merged)",
      `history: git -C ${dir} log --graph --oneline --all`,
      `The sample repository is at ${dir}`,
    ]) {
      expect(result.stdout).toContain(line);
    }
  });

  it("draws the live agent tree on a real terminal, redrawn in place and fitted to its width", async () => {
    const dir = await demoDir();
    // `script` gives the command a pseudo-terminal 70 columns wide.
    const command = `stty cols 70; exec ${process.execPath} ${keenEntry.join(" ")} demo --dir ${dir} --pace 20`;
    const result = await execa("script", ["-qfec", command, "/dev/null"], { cwd: repoRoot, reject: false, timeout: 110_000, stdin: "ignore" });
    expect(result.exitCode, result.stdout).toBe(0);
    const out = result.stdout;
    expect(out).toContain("\x1b[?25l");
    expect(out).toContain("\x1b[?25h");
    // Frames after the first go back up over the previous one.
    expect(out).toMatch(/\r\x1b\[\d+A\x1b\[2K/);
    // The last frame, as the terminal shows it, is the finished tree.
    const frames = out.split("\x1b[J");
    const finalFrame = frames.at(-2)!.split(/\x1b\[\d+A/).at(-1)!;
    const lines = finalFrame
      .split(/\r?\n/)
      .map((line) => line.replace(/\x1b\[2K/g, "").replace(/\x1b\[\?25[lh]/g, "").replace(/^\r/, ""))
      .filter((line) => line.trim() !== "");
    for (const line of lines) expect(visibleWidth(line), line).toBeLessThanOrEqual(69);
    const plain = lines.map((line) => line.replace(/\x1b\[[0-9;]*m/g, ""));
    expect(plain[0]).toMatch(/^keen ▸ Add farewell\(\) .* · success · \d+\.\d s$/);
    expect(plain.find((l) => l.startsWith("root "))).toMatch(/main +DONE +completed/);
    expect(plain.find((l) => l.startsWith("├─ A "))).toMatch(/summon-A +DONE +completed · merged/);
    expect(plain.find((l) => l.startsWith("│  └─ A-A "))).toMatch(/summon-A-A +DONE +completed · merged/);
    expect(plain.find((l) => l.startsWith("└─ B "))).toMatch(/summon-B +DONE +completed · resolved/);
    expect(out).toContain(`The sample repository is at ${dir}`);
  });

  it("stops on Ctrl-C with exit 130, leaving the terminal's cursor visible and saying where the repository is", async () => {
    const dir = await demoDir();
    const child = keen(["demo", "--dir", dir, "--pace", "400"], { KEEN_FORCE_TTY: "1", COLUMNS: "90", NO_COLOR: "1" });
    // Interrupt once the live view has drawn a frame with the children running.
    await new Promise<void>((resolve) => {
      let seen = "";
      child.stdout!.on("data", (chunk: Buffer) => {
        seen += chunk.toString("utf8");
        if (seen.includes("summon-B")) resolve();
      });
    });
    child.kill("SIGINT");
    const result = await child;
    expect(result.exitCode).toBe(130);
    expect(result.stderr).toBe(`keen: interrupted; agents stopped, the sample repository is at ${dir}`);
    expect(result.stdout.endsWith("\x1b[?25h")).toBe(true);
    expect(result.stdout).toMatch(/· aborted · \d+\.\d s/);
    expect(await git(dir, "status", "--porcelain")).toBe("");
  });

  it("refuses a folder that already holds files", async () => {
    const result = await keen(["demo", "--dir", repoRoot]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr.trim()).toMatch(/^keen: .* is already inside a git repository; pick an empty folder for the demo$/);
  });
});
