import { execFileSync } from "node:child_process";
import { symlink, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import * as z from "zod";
import { beforeEach, describe, expect, it } from "vitest";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo } from "../workspace/test-repo.js";
import { defineTool, executeTool, toolSpec, type Tool } from "./define-tool.js";
import { builtinTools, readOnlyTools, runCommandTool } from "./index.js";

let ws: LocalWorkspace;
let dir: string;
beforeEach(async () => {
  dir = await createTestRepo({ "README.md": "# title\nline two\nline three\n", "src/app.ts": "const a = 1;\nconst b = 2;\nconst a2 = 1;\n" });
  ws = await LocalWorkspace.open(dir);
});

const tool = (name: string): Tool<any> => builtinTools().find((t) => t.name === name)!;
const call = (name: string, input: unknown, signal = new AbortController().signal) =>
  executeTool(tool(name), input, { workspace: ws, signal, agentId: "root", toolUseId: "toolu_1" });

describe("defineTool and executeTool", () => {
  it("validates names and descriptions when defined", () => {
    expect(() => defineTool({ name: "bad name", description: "x", input: z.object({}), execute: () => "" })).toThrow(TypeError);
    expect(() => defineTool({ name: "ok", description: " ", input: z.object({}), execute: () => "" })).toThrow(TypeError);
  });

  it("turns a thrown error and a returned error into is_error results", async () => {
    const throws = defineTool({ name: "boom", description: "fails", input: z.object({}), execute: () => { throw new Error("kaput"); } });
    const returns = defineTool({ name: "soft", description: "fails softly", input: z.object({}), execute: () => ({ content: "not today", isError: true }) });
    const ctx = { workspace: ws, signal: new AbortController().signal, agentId: "root", toolUseId: "t" };
    expect(await executeTool(throws, {}, ctx)).toEqual({ content: "boom failed: kaput", isError: true });
    expect(await executeTool(returns, {}, ctx)).toEqual({ content: "not today", isError: true });
  });

  it("describes each built-in tool to the model with a JSON schema", () => {
    const specs = builtinTools().map(toolSpec);
    expect(specs.map((s) => s.name)).toEqual(["read_file", "list_files", "search_files", "write_file", "edit_file", "run_command"]);
    const edit = specs.find((s) => s.name === "edit_file")!;
    expect(edit.inputSchema).toMatchObject({ type: "object", required: ["path", "old_string", "new_string"] });
    expect(edit.inputSchema.$schema).toBeUndefined();
    expect(readOnlyTools().every((t) => t.readOnly)).toBe(true);
    expect(builtinTools().filter((t) => !t.readOnly).map((t) => t.name)).toEqual(["write_file", "edit_file", "run_command"]);
  });

  it("gives one read-only spec while the tool stays the same, made again when the tool's schema or words change", () => {
    const echo = { ...defineTool({ name: "echo", description: "Echoes", input: z.object({ text: z.string() }), execute: ({ text }) => text }) };
    const first = toolSpec(echo);
    expect(toolSpec(echo)).toBe(first);
    expect(() => {
      (first.inputSchema.properties as Record<string, unknown>).text = { type: "number" };
    }).toThrow(TypeError);
    expect(() => {
      first.description = "changed by a caller";
    }).toThrow(TypeError);
    expect(toolSpec(echo)).toEqual({ name: "echo", description: "Echoes", inputSchema: expect.objectContaining({ properties: { text: { type: "string" } } }) });
    echo.input = z.object({ text: z.string(), loud: z.boolean() });
    echo.description = "Echoes, maybe loudly";
    expect(toolSpec(echo)).toMatchObject({ description: "Echoes, maybe loudly", inputSchema: { required: ["text", "loud"] } });
  });
});

describe("built-in tools", () => {
  it("read_file numbers lines, reads windows and refuses binaries and escapes", async () => {
    expect((await call("read_file", { path: "README.md" })).content).toBe("1\t# title\n2\tline two\n3\tline three\n");
    expect((await call("read_file", { path: "README.md", offset: 2, limit: 1 })).content).toBe("2\tline two\n");
    expect(await call("read_file", { path: "README.md", offset: 9 })).toMatchObject({ isError: true });
    await writeFile(join(dir, "bin.dat"), Buffer.from([0, 1, 2, 0]));
    expect((await call("read_file", { path: "bin.dat" })).content).toMatch(/binary/);
    const escape = await call("read_file", { path: "../../etc/passwd" });
    expect(escape.isError).toBe(true);
    expect(escape.content).toMatch(/outside the workspace/);
    expect((await call("read_file", {})).content).toMatch(/Invalid input for read_file: path/);
  });

  it("read_file refuses a FIFO, a socket-like special file and a link to /dev/zero at once, without hanging", async () => {
    execFileSync("mkfifo", [join(dir, "pipe")]);
    const fifo = await call("read_file", { path: "pipe" });
    expect(fifo.isError).toBe(true);
    expect(fifo.content).toMatch(/not a regular file \(a FIFO\)/);
    // search_files walks untracked files too; the FIFO is skipped, not waited on.
    expect((await call("search_files", { pattern: "title" })).content).toContain("README.md:1");
    await symlink("/dev/zero", join(dir, "zero"));
    expect((await call("read_file", { path: "zero" })).isError).toBe(true);
    await expect(ws.readFile("pipe")).rejects.toMatchObject({ code: "not_regular_file" });
  });

  it("read_file refuses a file over its size cap before loading it, and stops when aborted", async () => {
    await writeFile(join(dir, "huge.txt"), "");
    await truncate(join(dir, "huge.txt"), 200 * 1024 * 1024); // sparse: 200 MB that cost no disk
    const before = process.memoryUsage().rss;
    const huge = await call("read_file", { path: "huge.txt" });
    expect(huge.isError).toBe(true);
    expect(huge.content).toMatch(/larger than \d+ bytes/);
    expect(process.memoryUsage().rss - before).toBeLessThan(50 * 1024 * 1024);
    const controller = new AbortController();
    controller.abort();
    await expect(ws.readFile("README.md", { signal: controller.signal })).rejects.toMatchObject({ code: "aborted" });
  });

  it("read_file pages through a line longer than a page by characters, and the hint makes progress", async () => {
    const line = Array.from({ length: 450_000 }, (_, i) => String.fromCharCode(97 + (i % 26))).join("");
    await writeFile(join(dir, "bundle.min.js"), `${line}\nsecond line\n`);
    let input: Record<string, unknown> = { path: "bundle.min.js" };
    let collected = "";
    for (let page = 0; page < 5; page++) {
      const { content, isError } = await call("read_file", input);
      expect(isError).toBeFalsy();
      const hint = /Read on with offset (\d+) and char_offset (\d+)/.exec(content);
      collected += content.split("\n")[0]!.replace(/^\s*1\t/, "");
      if (!hint) break;
      expect(Number(hint[2])).toBe(collected.length);
      input = { path: "bundle.min.js", offset: Number(hint[1]), char_offset: Number(hint[2]) };
    }
    expect(collected).toBe(line);
    expect((await call("read_file", { path: "bundle.min.js", offset: 2 })).content).toBe("2\tsecond line\n");
  });

  it("write_file creates and replaces files", async () => {
    expect((await call("write_file", { path: "new/dir/f.txt", content: "a\nb\n" })).content).toBe("Created new/dir/f.txt (2 lines)");
    expect((await call("write_file", { path: "new/dir/f.txt", content: "c\n" })).content).toBe("Replaced new/dir/f.txt (1 lines)");
    expect(await ws.readFile("new/dir/f.txt")).toBe("c\n");
  });

  it("edit_file replaces a unique string, and explains 0 or several matches", async () => {
    expect((await call("edit_file", { path: "src/app.ts", old_string: "const b = 2;", new_string: "const b = 3;" })).content).toBe("Edited src/app.ts: replaced 1 occurrence");
    expect(await ws.readFile("src/app.ts")).toBe("const a = 1;\nconst b = 3;\nconst a2 = 1;\n");
    const none = await call("edit_file", { path: "src/app.ts", old_string: "const z", new_string: "x" });
    expect(none).toMatchObject({ isError: true });
    expect(none.content).toMatch(/not found/);
    const many = await call("edit_file", { path: "src/app.ts", old_string: " = 1;", new_string: " = 9;" });
    expect(many.isError).toBe(true);
    expect(many.content).toMatch(/occurs 2 times/);
    expect(await ws.readFile("src/app.ts")).toBe("const a = 1;\nconst b = 3;\nconst a2 = 1;\n");
    expect((await call("edit_file", { path: "src/app.ts", old_string: " = 1;", new_string: " = 9;", replace_all: true })).content).toMatch(/replaced 2 occurrences/);
    expect(await ws.readFile("src/app.ts")).toBe("const a = 9;\nconst b = 3;\nconst a2 = 9;\n");
    // `$` patterns in the replacement are literal text.
    await call("edit_file", { path: "src/app.ts", old_string: "const b = 3;", new_string: "const b = '$&';" });
    expect(await ws.readFile("src/app.ts")).toContain("const b = '$&';");
  });

  it("list_files honours .gitignore and globs", async () => {
    await ws.writeFile(".gitignore", "dist/\n");
    await ws.writeFile("dist/out.js", "x");
    expect((await call("list_files", {})).content.split("\n")).toEqual([".gitignore", "README.md", "src/app.ts"]);
    expect((await call("list_files", { pattern: "src/**" })).content).toBe("src/app.ts");
    expect((await call("list_files", { pattern: "*.nope" })).content).toBe("No files match *.nope");
  });

  it("search_files finds regex matches as path:line: text and reports bad patterns", async () => {
    expect((await call("search_files", { pattern: "const a\\d?" })).content).toBe("src/app.ts:1: const a = 1;\nsrc/app.ts:3: const a2 = 1;");
    expect((await call("search_files", { pattern: "TITLE", case_insensitive: true })).content).toBe("README.md:1: # title");
    expect((await call("search_files", { pattern: "const", glob: "*.md" })).content).toMatch(/No matches/);
    const bad = await call("search_files", { pattern: "(" });
    expect(bad.isError).toBe(true);
    expect(bad.content).toMatch(/Invalid regular expression/);
  });

  it("run_command reports exit codes, errors, timeouts and truncation", async () => {
    const ok = await call("run_command", { command: "echo hi" });
    expect(ok).toEqual({ content: "hi\n\n[exit code 0]", isError: false });
    const failing = await call("run_command", { command: "echo nope >&2; exit 4" });
    expect(failing).toEqual({ content: "nope\n\n[exit code 4]", isError: true });
    const slow = await executeTool(runCommandTool({ maxTimeoutMs: 200 }), { command: "sleep 5", timeout_ms: 60_000 }, { workspace: ws, signal: new AbortController().signal, agentId: "root", toolUseId: "t" });
    expect(slow.isError).toBe(true);
    expect(slow.content).toMatch(/timed out after 200 ms \(process tree killed\)/);
    const big = await executeTool(runCommandTool({ maxOutputBytes: 100 }), { command: "seq 1 1000" }, { workspace: ws, signal: new AbortController().signal, agentId: "root", toolUseId: "t" });
    expect(big.content).toMatch(/bytes of output truncated/);
    expect(big.content).toMatch(/^1\n2\n/);
    expect(big.content).toMatch(/1000\n\n\[exit code 0\]$/);
  });
});

describe("search_files with a backtracking pattern", () => {
  it("gives up at its deadline with a clear error instead of stalling every agent, and stays usable", async () => {
    await writeFile(join(dir, "long.txt"), `${"a".repeat(40)}!\n`);
    const started = performance.now();
    const slow = await call("search_files", { pattern: "(a+)+b" });
    expect(slow.isError).toBe(true);
    expect(slow.content).toMatch(/took longer than 10 s/);
    // The bound is the tool's own deadline plus room for a loaded machine.
    expect(performance.now() - started).toBeLessThan(20_000);
    // The event loop stayed free meanwhile; the next search works.
    expect((await call("search_files", { pattern: "a{40}!" })).content).toBe(`long.txt:1: ${"a".repeat(40)}!`);
  }, 30_000);
});
