import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";

const gitIn = async (dir: string, ...args: string[]) => (await execa("git", args, { cwd: dir })).stdout;

describe("what a sandboxed command reaches of the host", () => {
  it("no abstract Unix socket of the host: the network namespace has its own", async () => {
    const name = `keen-abstract-${randomBytes(4).toString("hex")}`;
    // Python on both ends: it names abstract sockets by their exact length (libuv pads them).
    const listener = execa("python3", ["-c", `import socket
s = socket.socket(socket.AF_UNIX)
s.bind("\\0${name}")
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"host")
    c.close()`]);
    listener.catch(() => {});
    try {
      await new Promise<void>((resolve) => listener.stdout!.once("data", () => resolve()));
      const probe = `python3 -c "import socket;s=socket.socket(socket.AF_UNIX);s.connect('\\0${name}');print(s.recv(10))"`;
      // The same client on the host reaches it: the listener is real.
      expect((await execa("sh", ["-c", probe])).stdout).toContain("host");
      const ws = await LocalWorkspace.open(await createTestRepo());
      const result = await ws.exec(probe);
      expect(result.exitCode).not.toBe(0);
      expect(result.output).toMatch(/Connection refused/);
    } finally {
      listener.kill();
    }
  });

  it("PID 1 inside (bubblewrap) runs under the same seccomp filter, so tracing it gains nothing", async () => {
    const ws = await LocalWorkspace.open(await createTestRepo());
    const result = await ws.exec("grep Seccomp_filters /proc/1/status /proc/self/status");
    expect(result.exitCode, result.output).toBe(0);
    for (const line of result.output.trim().split("\n")) expect(Number(line.split(/\s+/).pop()), line).toBeGreaterThanOrEqual(1);
  });

  it("the root agent in a main checkout cannot hard-link its git config into the checkout", async () => {
    const dir = await createTestRepo();
    const ws = await LocalWorkspace.open(dir);
    const result = await ws.exec("ln .git/config cfg && echo linked");
    expect(result.output).not.toContain("linked");
    expect(result.output).toMatch(/Invalid cross-device link|Operation not permitted|Read-only/);
  });
});

describe("keen stays bounded and responsive", () => {
  it("a gigabyte on stdout keeps its output capped and keen's event loop moving", async () => {
    const ws = await LocalWorkspace.open(await createTestRepo());
    const lag = monitorEventLoopDelay({ resolution: 10 });
    lag.enable();
    const result = await ws.exec("head -c 1000000000 /dev/zero | tr '\\0' x; echo end", { timeoutMs: 120_000 });
    lag.disable();
    expect(result.exitCode).toBe(0);
    expect(result.truncated).toBe(true);
    expect(result.output.length).toBeLessThan(101_000);
    expect(result.output.endsWith("end\n")).toBe(true);
    // No single stall of keen's main thread longer than a second while a gigabyte went through it.
    expect(lag.max / 1e6).toBeLessThan(1000);
  }, 150_000);

  it("a command that ignores SIGTERM and never ends is killed at its timeout, children included", async () => {
    const ws = await LocalWorkspace.open(await createTestRepo());
    const started = performance.now();
    const result = await ws.exec("trap '' TERM INT HUP; sh -c \"trap '' TERM; while :; do :; done\" & while :; do sleep 1; done", { timeoutMs: 1000 });
    expect(result.timedOut).toBe(true);
    expect(performance.now() - started).toBeLessThan(5000);
  });
});

describe("links to host secrets", () => {
  it("are committed as links, never with their targets' content, and file tools refuse them", async () => {
    const secretDir = await mkdtemp(join(tmpdir(), "keen-secret-"));
    const token = `sk-ant-api03-${randomBytes(24).toString("hex")}`;
    const secretFile = join(secretDir, "token.txt");
    await writeFile(secretFile, `${token}\n`);
    try {
      const dir = await createTestRepo();
      const ws = await LocalWorkspace.open(dir);
      const child = await ws.fork("keen/links0001");
      const made = await child.exec(`ln -s /etc/shadow shadow && ln -s '${secretFile}' token && ln -s '${join(ws.gitCommonDir, "config")}' cfg && mkdir d && ln -s '${secretDir}' d/out`);
      expect(made.exitCode, made.output).toBe(0);
      for (const path of ["shadow", "token", "cfg", "d/out/token.txt"]) {
        await expect(child.readFile(path), path).rejects.toMatchObject({ code: "path_outside_workspace" });
      }
      const { sha } = await child.commit("links");
      for (const [path, target] of [["shadow", "/etc/shadow"], ["token", secretFile], ["cfg", join(ws.gitCommonDir, "config")], ["d/out", secretDir]] as const) {
        expect(await gitIn(dir, "cat-file", "-p", `${sha}:${path}`), path).toBe(target);
        expect((await gitIn(dir, "ls-tree", sha!, "--", path)).split(" ")[0], path).toBe("120000");
      }
      const everything = await gitIn(dir, "log", "-p", "--all");
      expect(everything).not.toContain(token);
      expect(await readFile(secretFile, "utf8")).toBe(`${token}\n`);
    } finally {
      await rm(secretDir, { recursive: true, force: true });
    }
  });
});

describe("per-worktree git config", () => {
  it("with extensions.worktreeConfig, a fork's config.worktree is as read-only as the shared config, so no filter of the agent's runs", async () => {
    const dir = await createTestRepo();
    await execa("git", ["config", "extensions.worktreeConfig", "true"], { cwd: dir });
    const proofDir = await mkdtemp(join(tmpdir(), "keen-proof-"));
    const proof = join(proofDir, "ran-on-host");
    try {
      const ws = await LocalWorkspace.open(dir);
      const child = await ws.fork("keen/wtconfig01");
      const gitDir = join(ws.gitCommonDir, "worktrees", "wtconfig01");
      for (const command of [
        `git config --worktree filter.evil.clean 'touch ${proof}; cat'`,
        `printf '[filter "evil"]\\n\\tclean = touch ${proof}\\n' > '${gitDir}/config.worktree'`,
        `printf '* filter=evil\\n' > '${gitDir}/info/attributes'`,
        `git config --worktree core.attributesFile /dev/null`,
      ]) {
        const result = await child.exec(command);
        expect(result.exitCode, `${command}: ${result.output}`).not.toBe(0);
      }
      await child.writeFile(".gitattributes", "* filter=evil\n");
      await child.writeFile("a.txt", "a\n");
      expect((await child.commit("work")).sha).toMatch(/^[0-9a-f]{40}$/);
      await ws.merge(await child.currentBranch(), "merge");
      expect(existsSync(proof)).toBe(false);
    } finally {
      await rm(proofDir, { recursive: true, force: true });
    }
  });
});
