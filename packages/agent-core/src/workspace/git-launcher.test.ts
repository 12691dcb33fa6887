import childProcess from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, realpath, writeFile } from "node:fs/promises";
import { syncBuiltinESMExports } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { gitBytes, gitRaw, type GitTarget } from "./git.js";
import { createTestRepo } from "./test-repo.js";

// Every `git` this file's process spawns itself (the launcher's shell starts the others).
let spawnedGit = 0;
const originalSpawn = childProcess.spawn;
let target: GitTarget;
let dir: string;

beforeAll(async () => {
  childProcess.spawn = ((command: string, ...rest: unknown[]) => {
    if (command === "git") spawnedGit++;
    return (originalSpawn as (...params: unknown[]) => ReturnType<typeof originalSpawn>)(command, ...rest);
  }) as typeof childProcess.spawn;
  syncBuiltinESMExports();
  dir = await realpath(await createTestRepo({ "README.md": "# r\n" }));
  target = { gitDir: join(dir, ".git"), workTree: dir };
});
afterAll(() => {
  childProcess.spawn = originalSpawn;
  syncBuiltinESMExports();
});

/** The launcher's shells: `/bin/sh -s` children of this process. */
function launcherShells(): number[] {
  const found: number[] = [];
  for (const pid of readdirSync("/proc").filter((name) => /^\d+$/.test(name))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const parent = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (parent === process.pid && readFileSync(`/proc/${pid}/cmdline`, "utf8") === "/bin/sh\0-s\0") found.push(Number(pid));
    } catch {
      // Exited while we looked.
    }
  }
  return found;
}

/** git's own quoting (`rev-parse --sq-quote`): each word single-quoted, with `'` and `!` set outside the quotes. */
const sqQuoted = (words: string[]) => `${words.map((word) => ` '${word.replace(/'/g, `'\\''`).replace(/!/g, `'\\!'`)}'`).join("")}\n`;

const HOSTILE = ["it's", "$(touch pwned)", "`touch pwned`", "a\nb", "; exit 3", "*", "~", "$HOME", "\\", '"', "!x", "é 😀 \u200c", "-x", "--", "", " ", "\t", "a'\\''b", "%s%n"];

describe("git calls through the launcher", () => {
  it("start no process of keen's own: git comes from the resident shell (KEEN_GIT_LAUNCHER=0 spawns it)", async () => {
    await gitRaw(target, ["rev-parse", "HEAD"]);
    expect(launcherShells()).toHaveLength(1);
    spawnedGit = 0;
    for (let i = 0; i < 5; i++) expect((await gitRaw(target, ["rev-parse", "HEAD"])).exitCode).toBe(0);
    expect(spawnedGit).toBe(0);
    process.env.KEEN_GIT_LAUNCHER = "0";
    try {
      expect((await gitRaw(target, ["rev-parse", "HEAD"])).exitCode).toBe(0);
    } finally {
      delete process.env.KEEN_GIT_LAUNCHER;
    }
    expect(spawnedGit).toBe(1);
  });

  it("pass hostile arguments to git exactly, as spawn does", async () => {
    const launched = await gitRaw(target, ["rev-parse", "--sq-quote", ...HOSTILE]);
    expect(launched).toEqual({ exitCode: 0, stdout: sqQuoted(HOSTILE), stderr: "" });
    process.env.KEEN_GIT_LAUNCHER = "0";
    try {
      expect(await gitRaw(target, ["rev-parse", "--sq-quote", ...HOSTILE])).toEqual(launched);
    } finally {
      delete process.env.KEEN_GIT_LAUNCHER;
    }
    await expect(readFile(join(dir, "pwned"))).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("pass hostile environment values exactly, and unset variables removed since the shell started", async () => {
    for (const value of HOSTILE.filter((word) => word !== "")) {
      const read = await gitRaw(target, ["--config-env=keen.value=KEEN_HOSTILE", "config", "-z", "--get", "keen.value"], { env: { KEEN_HOSTILE: value } });
      expect(read).toEqual({ exitCode: 0, stdout: `${value}\0`, stderr: "" });
    }
    // A shell started with the variable set; once it is gone from keen's environment, git has it no more.
    process.env.KEEN_LAUNCHER_GONE = "here";
    for (const pid of launcherShells()) process.kill(pid, "SIGKILL");
    await new Promise((resolve) => setTimeout(resolve, 50));
    const args = ["--config-env=keen.value=KEEN_LAUNCHER_GONE", "config", "--get", "keen.value"];
    expect(await gitRaw(target, args)).toMatchObject({ exitCode: 0, stdout: "here\n" });
    delete process.env.KEEN_LAUNCHER_GONE;
    const gone = await gitRaw(target, args);
    expect(gone.exitCode).not.toBe(0);
    expect(gone.stderr).toContain("KEEN_LAUNCHER_GONE");
  });

  it("run git in a directory with a hostile name", async () => {
    const name = "it's $(x) `y` a\nb ; * é -x";
    await mkdir(join(dir, name), { recursive: true });
    expect(await gitRaw(target, ["rev-parse", "--show-prefix"], { cwd: join(dir, name) })).toEqual({ exitCode: 0, stdout: `${name}/\n`, stderr: "" });
  });

  it("return binary stdout byte for byte (NUL bytes, invalid UTF-8) and pass stdin with NUL bytes", async () => {
    const bytes = Buffer.from([0, 1, 2, 0xff, 0xfe, 0xc3, 0x28, 0, 10, 13, 0x80, 0]);
    await writeFile(join(dir, "binary.bin"), bytes);
    const blob = (await gitRaw(target, ["hash-object", "-w", "binary.bin"])).stdout.trim();
    expect(await gitBytes(target, ["cat-file", "blob", blob])).toEqual(bytes);
    const text = "a\0b\0\n\0'$(x)'";
    const expected = createHash("sha1").update(`blob ${Buffer.byteLength(text)}\0${text}`).digest("hex");
    expect((await gitRaw(target, ["hash-object", "--stdin"], { input: text })).stdout).toBe(`${expected}\n`);
    expect((await gitRaw(target, ["hash-object", "--stdin"], { input: Promise.resolve(text) })).stdout).toBe(`${expected}\n`);
    // A rejected input closes stdin with nothing on it.
    const empty = createHash("sha1").update("blob 0\0").digest("hex");
    expect((await gitRaw(target, ["hash-object", "--stdin"], { input: Promise.reject(new Error("no input")) })).stdout).toBe(`${empty}\n`);
  });

  it("run 50 calls at once, each answered with its own output", async () => {
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => gitRaw(target, ["rev-parse", "--sq-quote", `call ${i}`])));
    expect(results.map((result) => result.stdout)).toEqual(Array.from({ length: 50 }, (_, i) => ` 'call ${i}'\n`));
    expect(results.every((result) => result.exitCode === 0)).toBe(true);
  });

  it("end a call whose output passes 100 MB as failed, with no exit code", async () => {
    await writeFile(join(dir, "mb.bin"), Buffer.alloc(1024 * 1024, 7));
    const blob = (await gitRaw(target, ["hash-object", "-w", "mb.bin"])).stdout.trim();
    const result = await gitRaw(target, ["cat-file", "--batch"], { input: `${blob}\n`.repeat(120) });
    expect(result.exitCode).toBeUndefined();
    expect(result.stdout).toBe("");
    expect(result.stderr).toContain("git cat-file wrote more than 104857600 bytes");
  });

  it("leave no finished job behind in the shell (no zombie per call)", async () => {
    for (let i = 0; i < 40; i++) await gitRaw(target, ["rev-parse", "HEAD"]);
    const [shell] = launcherShells();
    const children = readdirSync("/proc").filter((pid) => {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
        return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1] === String(shell);
      } catch {
        return false;
      }
    });
    expect(children.length).toBeLessThan(5);
  });

  it("report a missing git and a missing directory with no exit code and a clear message", async () => {
    spawnedGit = 0;
    const path = process.env.PATH;
    process.env.PATH = "/nonexistent";
    try {
      const missing = await gitRaw(target, ["rev-parse", "HEAD"]);
      expect(missing).toMatchObject({ exitCode: undefined, stdout: "" });
      expect(missing.stderr).toContain("no git on PATH");
    } finally {
      process.env.PATH = path;
    }
    const nowhere = await gitRaw(target, ["rev-parse", "HEAD"], { cwd: join(dir, "no such \\t folder") });
    expect(nowhere).toMatchObject({ exitCode: undefined, stdout: "" });
    expect(nowhere.stderr).toContain(`cannot enter ${join(dir, "no such \\t folder")}`);
    expect(spawnedGit).toBe(0);
  });

  it("give git's fatal exit (128) as an exit code", async () => {
    const fatal = await gitRaw(target, ["rev-parse", "--verify", "no-such-ref^{commit}"]);
    expect(fatal.exitCode).toBe(128);
    expect(fatal.stderr).toContain("fatal");
  });

  it("use a PATH set after the shell started", async () => {
    await gitRaw(target, ["rev-parse", "HEAD"]);
    const wrapper = await mkdtemp(join(tmpdir(), "keen-git-wrapper-"));
    const log = join(wrapper, "calls.log");
    const realGit = (await execa("sh", ["-c", "command -v git"])).stdout.trim();
    await writeFile(join(wrapper, "git"), `#!/bin/sh\necho called >> '${log}'\nexec '${realGit}' "$@"\n`);
    await chmod(join(wrapper, "git"), 0o755);
    const path = process.env.PATH;
    process.env.PATH = `${wrapper}:${path}`;
    try {
      expect((await gitRaw(target, ["rev-parse", "HEAD"])).exitCode).toBe(0);
      expect((await gitRaw(target, ["rev-parse", "HEAD"])).exitCode).toBe(0);
    } finally {
      process.env.PATH = path;
    }
    expect(await readFile(log, "utf8")).toBe("called\ncalled\n");
    expect(launcherShells()).toHaveLength(1);
  });

  it("settle a call in flight when the shell dies, with an error, and start a new shell for the next call", async () => {
    await gitRaw(target, ["rev-parse", "HEAD"]);
    const [shell] = launcherShells();
    const slow = gitRaw(target, ["-c", "alias.slow=!sleep 3", "slow"]);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const started = Date.now();
    process.kill(shell!, "SIGKILL");
    const result = await slow;
    expect(Date.now() - started).toBeLessThan(1000);
    expect(result.exitCode).toBeUndefined();
    expect(result.stderr).toContain("launcher");
    expect(await gitRaw(target, ["rev-parse", "--sq-quote", "next"])).toEqual({ exitCode: 0, stdout: " 'next'\n", stderr: "" });
    const shells = launcherShells();
    expect(shells).toHaveLength(1);
    expect(shells[0]).not.toBe(shell);
  });

  it("leaves no shell and no files behind when keen is killed with SIGKILL", async () => {
    const script = join(await mkdtemp(join(tmpdir(), "keen-launcher-kill-")), "killed.mts");
    const gitModule = new URL("./git.ts", import.meta.url).pathname;
    await writeFile(
      script,
      `import { readdirSync, readFileSync, readlinkSync } from "node:fs";\n` +
        `import { gitRaw } from ${JSON.stringify(gitModule)};\n` +
        `await gitRaw(${JSON.stringify(target)}, ["rev-parse", "HEAD"]);\n` +
        // The launcher's shell is this process's child running `/bin/sh -s`; its folder is its working directory.
        `const shell = readdirSync("/proc").filter((p) => /^\\d+$/.test(p)).find((p) => { try { const st = readFileSync("/proc/" + p + "/stat", "utf8"); return Number(st.slice(st.lastIndexOf(")") + 2).split(" ")[1]) === process.pid && readFileSync("/proc/" + p + "/cmdline", "utf8") === "/bin/sh\\0-s\\0"; } catch { return false; } });\n` +
        `process.stdout.write(JSON.stringify({ shell: Number(shell), folder: readlinkSync("/proc/" + shell + "/cwd") }) + "\\n");\n` +
        `setInterval(() => {}, 1000);\n`,
    );
    const child = execa(process.execPath, ["--import", "tsx", script], { cwd: process.cwd(), timeout: 30_000, reject: false });
    const line = await new Promise<string>((resolve) => child.stdout!.once("data", (chunk: Buffer) => resolve(chunk.toString())));
    const { shell, folder } = JSON.parse(line) as { shell: number; folder: string };
    expect(existsSync(folder)).toBe(true);
    child.kill("SIGKILL");
    await child;
    const deadline = Date.now() + 5000;
    while ((existsSync(`/proc/${shell}`) || existsSync(folder)) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    expect(existsSync(`/proc/${shell}`)).toBe(false);
    expect(existsSync(folder)).toBe(false);
  });

  it("keep no process alive: a script that makes one git call exits as soon as its work is done", async () => {
    const script = join(await mkdtemp(join(tmpdir(), "keen-launcher-exit-")), "one-call.mts");
    const gitModule = new URL("./git.ts", import.meta.url).pathname;
    await writeFile(
      script,
      `import { gitRaw } from ${JSON.stringify(gitModule)};\n` +
        `const result = await gitRaw(${JSON.stringify(target)}, ["rev-parse", "--sq-quote", "done"]);\n` +
        `process.stdout.write(result.stdout);\n` +
        // Fires only if something holds the process open after the call.
        `setTimeout(() => process.exit(9), 3000).unref();\n`,
    );
    const child = await execa(process.execPath, ["--import", "tsx", script], { cwd: process.cwd(), timeout: 30_000, reject: false });
    expect(child).toMatchObject({ exitCode: 0, stdout: " 'done'" });
  });
});
