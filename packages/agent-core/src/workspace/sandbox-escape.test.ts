import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";

const marker = () => randomBytes(6).toString("hex");
const gitIn = (dir: string, ...args: string[]) => execa("git", args, { cwd: dir, reject: false });

/**
 * The attack of a sandboxed agent on keen's own git calls: a repository of its own with a
 * post-commit hook and an fsmonitor command, and the worktree's `.git` file pointed at it.
 * Returns the host path the two commands would touch if they ever ran outside the sandbox.
 */
function gitDirAttack(proof: string): string {
  return [
    "set -e",
    "git init -q evil",
    "mkdir -p evil/.git/hooks",
    `printf '#!/bin/sh\\ntouch ${proof}.hook\\n' > evil/.git/hooks/post-commit`,
    "chmod +x evil/.git/hooks/post-commit",
    `printf '#!/bin/sh\\ntouch ${proof}.fsmonitor\\n' > evil/fsmonitor.sh`,
    "chmod +x evil/fsmonitor.sh",
    'git -C evil config core.fsmonitor "$PWD/evil/fsmonitor.sh"',
    "printf 'gitdir: %s/evil/.git\\n' \"$PWD\" > .git",
  ].join("\n");
}

describe("the sandboxed agent cannot steer keen's git on the host", () => {
  let dir: string;
  let proofDir: string;
  beforeAll(async () => {
    dir = await createTestRepo({ "README.md": "# escape\n" });
    proofDir = await mkdtemp(join(tmpdir(), "keen-proof-"));
  });
  afterAll(async () => {
    await rm(proofDir, { recursive: true, force: true });
  });

  it("in a real bwrap sandbox: the .git file is read-only, and the child's commit lands in the repository", async () => {
    const ws = await LocalWorkspace.open(dir);
    const child = await ws.fork(`escape-${marker()}`);
    const proof = join(proofDir, `sandboxed-${marker()}`);
    const attack = await child.exec(gitDirAttack(proof));
    expect(attack.exitCode, attack.output).not.toBe(0);
    expect(attack.output).toMatch(/Read-only file system|Device or resource busy|Permission denied/);
    // The agent's git still works inside (reads through the intact .git file).
    expect((await child.exec("git log --oneline -1")).output).toContain("initial");
    await child.writeFile("work.txt", "done\n");
    const { sha } = await child.commit("child work");
    expect(existsSync(`${proof}.hook`)).toBe(false);
    expect(existsSync(`${proof}.fsmonitor`)).toBe(false);
    // The commit exists in the repository, on the child's branch.
    expect((await gitIn(dir, "cat-file", "-t", sha!)).stdout).toBe("commit");
    expect((await gitIn(dir, "rev-parse", await child.currentBranch())).stdout).toBe(sha);
    const merged = await ws.merge(await child.currentBranch(), "Merge child");
    expect(merged.status).toBe("merged");
    expect(await readFile(join(dir, "work.txt"), "utf8")).toBe("done\n");
    await child.dispose();
    expect((await gitIn(dir, "worktree", "list", "--porcelain")).stdout).not.toContain("escape-");
  });

  it("even when the .git file was rewritten (no sandbox): no hook or fsmonitor runs, and the commit is real", async () => {
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const branch = `rewritten-${marker()}`;
    const child = await ws.fork(branch);
    const proof = join(proofDir, `unsandboxed-${marker()}`);
    const attack = await child.exec(gitDirAttack(proof));
    expect(attack.exitCode, attack.output).toBe(0);
    expect(await readFile(join(child.root, ".git"), "utf8")).toContain("/evil/.git");
    // Plain git in the worktree would now run the attacker's fsmonitor: the attack is real.
    const plain = await execa("git", ["status", "--porcelain"], { cwd: child.root, reject: false });
    expect(plain.exitCode).toBe(0);
    expect(existsSync(`${proof}.fsmonitor`)).toBe(true);
    await rm(`${proof}.fsmonitor`);

    await child.writeFile("work.txt", "rewritten\n");
    const { sha, skipped } = await child.commit("child work");
    expect(existsSync(`${proof}.hook`)).toBe(false);
    expect(existsSync(`${proof}.fsmonitor`)).toBe(false);
    expect((await gitIn(dir, "rev-parse", branch)).stdout).toBe(sha);
    expect((await gitIn(dir, "show", `${sha}:work.txt`)).stdout).toBe("rewritten");
    // The attacker's repository is a nested repository: never committed as a gitlink.
    expect(skipped).toContainEqual(expect.objectContaining({ path: "evil", reason: "not_regular" }));
    expect((await gitIn(dir, "ls-tree", "--name-only", sha!)).stdout.split("\n")).not.toContain("evil");
    expect(await child.currentBranch()).toBe(branch);
    // Dispose still removes the worktree and its registration, though git cannot validate it.
    await child.dispose();
    expect(existsSync(child.root)).toBe(false);
    expect((await gitIn(dir, "worktree", "list", "--porcelain")).stdout).not.toContain(branch);
  });

  it("keen's git ignores hooks and fsmonitor configured in the repository itself", async () => {
    const repo = await createTestRepo();
    const proof = join(proofDir, `config-${marker()}`);
    await writeFile(join(repo, ".git", "hooks", "pre-commit"), `#!/bin/sh\ntouch ${proof}.hook\n`, { mode: 0o755 });
    await writeFile(join(repo, ".git", "hooks", "post-checkout"), `#!/bin/sh\ntouch ${proof}.checkout\n`, { mode: 0o755 });
    await writeFile(join(repo, "mon.sh"), `#!/bin/sh\ntouch ${proof}.fsmonitor\n`, { mode: 0o755 });
    await gitIn(repo, "config", "core.fsmonitor", join(repo, "mon.sh"));
    const ws = await LocalWorkspace.open(repo, { sandbox: false });
    const child = await ws.fork(`hooks-${marker()}`);
    await child.writeFile("a.txt", "a\n");
    expect((await child.commit("a")).sha).toMatch(/^[0-9a-f]{40}$/);
    await ws.merge(await child.currentBranch(), "merge");
    for (const kind of ["hook", "checkout", "fsmonitor"]) expect(existsSync(`${proof}.${kind}`), kind).toBe(false);
  });
});

describe("what a sandboxed command can see", () => {
  let dir: string;
  let ws: LocalWorkspace;
  beforeAll(async () => {
    dir = await createTestRepo({ "README.md": "# view\n" });
    ws = await LocalWorkspace.open(dir);
  });

  it("keen's environment, API key included, is nowhere inside: not in /proc/1/environ, not in any process", async () => {
    const secret = `sk-ant-test-${marker()}`;
    process.env.ANTHROPIC_API_KEY = secret;
    process.env.KEEN_OTHER_SECRET = secret;
    try {
      const result = await ws.exec("cat /proc/1/environ | tr '\\0' '\\n'; echo ---; cat /proc/[0-9]*/environ | tr '\\0' '\\n'; echo ---; env");
      expect(result.exitCode, result.output).toBe(0);
      expect(result.output).toContain("PATH=");
      expect(result.output).not.toContain(secret);
      expect(result.output).not.toContain("ANTHROPIC_API_KEY");
    } finally {
      delete process.env.ANTHROPIC_API_KEY;
      delete process.env.KEEN_OTHER_SECRET;
    }
  });

  it("shows an empty home and no /root, other homes, /etc/shadow or credential files of /etc", async () => {
    const name = `.npmrc-keen-${marker()}`;
    const home = homedir();
    await writeFile(join(home, name), "//registry.npmjs.org/:_authToken=secret\n");
    try {
      const script = [
        `cat '${join(home, name)}'`,
        "cat /etc/shadow",
        "ls /root",
        "ls /home",
        "cat /etc/npmrc",
        "ls /etc/ssh",
        "ls -A \"$HOME\"",
      ];
      for (const command of script) {
        const result = await ws.exec(command);
        if (command.startsWith("ls -A")) {
          expect(result.output.trim(), command).toBe("");
          continue;
        }
        expect(result.exitCode, `${command}: ${result.output}`).not.toBe(0);
        expect(result.output, command).not.toContain("secret");
      }
      // Tools still work: the shell, git, node, TLS certificates and user names resolve.
      const tools = await ws.exec("git --version && node -e 'console.log(1+1)' && id -un && test -d /etc/ssl/certs && cat README.md");
      expect(tools.exitCode, tools.output).toBe(0);
      expect(tools.output).toContain("# view");
    } finally {
      await rm(join(home, name), { force: true });
    }
  });

  it("widens the view only when asked: extraReadOnlyPaths or hostView: full", async () => {
    const extra = await mkdtemp(join(homedir(), "keen-extra-"));
    await writeFile(join(extra, "tool.txt"), "toolchain\n");
    try {
      expect((await ws.exec(`cat '${join(extra, "tool.txt")}'`)).exitCode).not.toBe(0);
      const widened = await LocalWorkspace.open(dir, { sandbox: { extraReadOnlyPaths: [extra] }, recovery: false });
      expect((await widened.exec(`cat '${join(extra, "tool.txt")}'`)).output).toBe("toolchain\n");
      expect((await widened.exec(`echo x > '${join(extra, "tool.txt")}'`)).exitCode).not.toBe(0);
      const full = await LocalWorkspace.open(dir, { sandbox: { hostView: "full" }, recovery: false });
      expect((await full.exec(`cat '${join(extra, "tool.txt")}'`)).output).toBe("toolchain\n");
    } finally {
      await rm(extra, { recursive: true, force: true });
    }
  });

  it("bounds the private /tmp", async () => {
    const small = await LocalWorkspace.open(dir, { sandbox: { tmpBytes: 8 * 1024 * 1024 }, recovery: false });
    const result = await small.exec("head -c 20000000 /dev/zero > /tmp/big; echo rc=$?; ls -l /tmp/big");
    expect(result.output).toMatch(/No space left on device/);
    expect(result.output).toContain("8388608");
  });

  it("bounds the number of processes inside, also as root", async () => {
    const limited = await LocalWorkspace.open(dir, { sandbox: { maxProcesses: 40 }, recovery: false });
    // node starts 100 children and counts those the kernel allowed (node's own threads count too).
    const script = `const { spawn } = require("child_process"); let ok = 0; const kids = []; for (let i = 0; i < 100; i++) { try { const c = spawn("sleep", ["5"]); c.on("error", () => {}); if (c.pid) { ok++; kids.push(c); } } catch {} } console.log("started " + ok); for (const c of kids) c.kill();`;
    const result = await limited.exec(`node -e '${script}'`, { timeoutMs: 30_000 });
    const started = Number(/started (\d+)/.exec(result.output)?.[1]);
    expect(started, result.output).toBeLessThan(40);
    expect(started).toBeGreaterThan(5);
    // The default limit leaves ordinary work alone.
    expect(Number(/started (\d+)/.exec((await ws.exec(`node -e '${script}'`, { timeoutMs: 30_000 })).output)?.[1])).toBe(100);
    // No cgroup is left behind.
    const leftovers = await execa("sh", ["-c", `ls -d /sys/fs/cgroup/pids/keen-${process.pid}-* /sys/fs/cgroup/keen-${process.pid}-* 2>/dev/null | wc -l`]);
    expect(leftovers.stdout.trim()).toBe("0");
  });
});

describe("opening the repository path", () => {
  it("opens a repository whose path contains a newline", async () => {
    const parent = await mkdtemp(join(tmpdir(), "keen-odd-"));
    const dir = join(parent, "line one\nline two");
    await mkdir(dir);
    await execa("git", ["init", "-q", "-b", "main"], { cwd: dir });
    await writeFile(join(dir, "a.txt"), "a\n");
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    expect(ws.root).toBe(dir);
    await ws.writeFile("b.txt", "b\n");
    const { sha } = await ws.commit("first", { author: { name: "t", email: "t@t" } });
    expect(sha).toMatch(/^[0-9a-f]{40}$/);
    const child = await ws.fork("keen/abcd1234");
    expect(await child.readFile("b.txt")).toBe("b\n");
    await child.dispose();
    await rm(parent, { recursive: true, force: true });
  });
});
