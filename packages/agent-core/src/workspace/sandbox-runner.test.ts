import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { executeTool } from "../tools/define-tool.js";
import { readOnlyTools, runCommandTool } from "../tools/index.js";
import { LocalWorkspace } from "./local-workspace.js";
import { isSandboxAvailable, sandboxRunner, SandboxUnavailableError } from "./sandbox-runner.js";
import { createTestRepo, hostPidsRunning } from "./test-repo.js";
import { runWorkspaceContract } from "./workspace.contract.js";

runWorkspaceContract("LocalWorkspace in the sandbox", async () => {
  const dir = await createTestRepo();
  return { dir, workspace: await LocalWorkspace.open(dir, { sandbox: true }) };
});

const marker = () => randomBytes(6).toString("hex");

async function waitFor(check: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 250; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe("sandboxRunner", () => {
  let dir: string;
  let ws: LocalWorkspace;
  let childA: LocalWorkspace;
  let childB: LocalWorkspace;
  beforeAll(async () => {
    dir = await createTestRepo({ "README.md": "# sandbox\n" });
    ws = await LocalWorkspace.open(dir);
    childA = await ws.fork("summon-A");
    childB = await ws.fork("summon-B");
  });
  afterAll(async () => {
    await childA.dispose();
    await childB.dispose();
  });

  it("is the default for LocalWorkspace, and bwrap works on this machine", async () => {
    expect(await isSandboxAvailable()).toBe(true);
    expect(ws.sandboxed).toBe(true);
    expect(childA.sandboxed).toBe(true);
  });

  it("lets a command write inside its worktree, and nowhere else", async () => {
    const name = `keen-escape-${marker()}`;
    const targets = [
      join(childB.root, name), // a sibling worktree
      join(dir, ".git", name), // the repository's git dir
      join(dir, ".git", "refs", "heads", name),
      join("/etc", name),
      join("/root", name),
      join(homedir(), name), // the real user's home
      join("/usr/local", name),
    ];
    const inside = await childA.exec(`echo inside > ${name}.txt`);
    expect(inside.exitCode, inside.output).toBe(0);
    expect(await readFile(join(childA.root, `${name}.txt`), "utf8")).toBe("inside\n");
    for (const target of targets) {
      const result = await childA.exec(`echo x > '${target}'`);
      expect(result.exitCode, `${target}: ${result.output}`).not.toBe(0);
      expect(result.output).toMatch(/Read-only file system|Permission denied|Directory nonexistent|No such file/);
      expect(existsSync(target), target).toBe(false);
    }
    // The main checkout is not shown at all (only its git dir is): whatever a command writes at
    // its path stays in the sandbox's own folders and never reaches the host.
    await childA.exec(`mkdir -p '${dir}' && echo x > '${join(dir, name)}'`);
    expect(existsSync(join(dir, name))).toBe(false);
    // The same command without the sandbox does escape: the checks above can fail.
    const open = await LocalWorkspace.open(childA.root, { sandbox: false });
    expect((await open.exec(`echo x > '${join(childB.root, name)}'`)).exitCode).toBe(0);
    expect(existsSync(join(childB.root, name))).toBe(true);
  });

  it("keeps the root agent out of its own git dir and its children's worktrees", async () => {
    const name = `keen-${marker()}`;
    expect((await ws.exec(`touch ${name}.txt`)).exitCode).toBe(0);
    expect(existsSync(join(dir, `${name}.txt`))).toBe(true);
    for (const target of [join(dir, ".git", "config"), join(childA.root, name)]) {
      const result = await ws.exec(`echo x >> '${target}'`);
      expect(result.exitCode, target).not.toBe(0);
    }
    expect(await readFile(join(dir, ".git", "config"), "utf8")).not.toMatch(/^x$/m);
  });

  it("reads git history inside a worktree but cannot write it; keen commits outside", async () => {
    await childA.writeFile("work.txt", "work\n");
    const status = await childA.exec("git status --short && git log --oneline -1");
    expect(status.exitCode, status.output).toBe(0);
    expect(status.output).toContain("?? work.txt");
    expect(status.output).toContain("initial");
    const commit = await childA.exec("git add work.txt && git -c user.name=x -c user.email=x@x commit -qm sneaky");
    expect(commit.exitCode).not.toBe(0);
    expect((await childA.commit("work")).sha).toMatch(/^[0-9a-f]{40}$/);
  });

  it("cannot open a socket: no TCP to a server on the host, no DNS", async () => {
    let connections = 0;
    const server: Server = createServer((socket) => {
      connections++;
      socket.on("error", () => {});
      socket.end("hello\n");
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as { port: number }).port;
    const connect = `node -e "require('net').connect(${port}, '127.0.0.1').on('connect', () => { console.log('connected'); process.exit(0) }).on('error', (e) => { console.log(e.code); process.exit(3) })"`;
    try {
      const sandboxed = await childA.exec(connect);
      expect(sandboxed.exitCode, sandboxed.output).toBe(3);
      expect(sandboxed.output).toMatch(/ECONNREFUSED|ENETUNREACH/);
      const dns = await childA.exec(`node -e "require('dns').lookup('example.com', (e) => { console.log(e ? e.code : 'resolved'); process.exit(e ? 3 : 0) })"`);
      expect(dns.exitCode, dns.output).toBe(3);
      const interfaces = await childA.exec("cat /proc/net/dev");
      expect(interfaces.output.split("\n").filter((line) => line.includes(":")).map((line) => line.split(":")[0]!.trim())).toEqual(["lo"]);
      expect(connections).toBe(0);
      // Control: the same command on the host reaches the server.
      const open = await LocalWorkspace.open(childA.root, { sandbox: false });
      expect((await open.exec(connect)).output).toContain("connected");
      expect(connections).toBe(1);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("gives every command a private /tmp and a writable HOME there", async () => {
    const name = `keen-private-${marker()}`;
    const result = await childA.exec(`echo secret > /tmp/${name} && cat /tmp/${name} && touch "$HOME/.rc" && echo "home=$HOME"`);
    expect(result.exitCode, result.output).toBe(0);
    expect(result.output).toContain("secret");
    expect(result.output).toContain("home=/tmp/home");
    expect(existsSync(join("/tmp", name))).toBe(false);
    expect((await childA.exec(`test -e /tmp/${name}`)).exitCode).toBe(1);
  });

  it("hides paths it is asked to hide, keeping the workspace visible", async () => {
    const secrets = join(dir, ".git", "keen-secrets");
    await mkdir(secrets, { recursive: true });
    await writeFile(join(secrets, "token"), "s3cret\n");
    const check = `cat '${join(secrets, "token")}'`;
    expect((await childA.exec(check)).output).toBe("s3cret\n"); // the main checkout is readable by default
    const hiding = await LocalWorkspace.open(childA.root, { sandbox: { hidePaths: [secrets, tmpdir()] }, recovery: false });
    const hidden = await hiding.exec(check);
    expect(hidden.exitCode).not.toBe(0);
    expect(hidden.output).not.toContain("s3cret");
    // The workspace under the hidden /tmp is still there, and writable.
    const inside = await hiding.exec("cat README.md && echo y > hidden-ok.txt");
    expect(inside.output).toBe("# sandbox\n");
    expect(await readFile(join(childA.root, "hidden-ok.txt"), "utf8")).toBe("y\n");
    await rm(secrets, { recursive: true });
  });

  it("passes only a small environment, plus what the caller sets", async () => {
    process.env.KEEN_TEST_SECRET = "do-not-leak";
    try {
      const result = await childA.exec('printf "%s|%s" "$KEEN_TEST_SECRET" "$KEEN_GIVEN"', { env: { KEEN_GIVEN: "given" } });
      expect(result.output).toBe("|given");
    } finally {
      delete process.env.KEEN_TEST_SECRET;
    }
  });

  it("stops a busy loop at the CPU-time limit", async () => {
    const limited = await LocalWorkspace.open(dir, { sandbox: { cpuSeconds: 1 }, recovery: false });
    const result = await limited.exec("while :; do :; done", { timeoutMs: 20_000 });
    expect(result.timedOut).toBe(false);
    expect(result.exitCode).toBe(128 + 24);
    expect(result.output).toContain("CPU time limit of 1 s reached");
    expect(result.durationMs).toBeLessThan(10_000);
  });

  it("stops a process at the memory limit, and the same work fits under the default", async () => {
    // Builds a 64 MiB string by doubling; needs a few times that in address space.
    const grow = `awk 'BEGIN { s = "x"; for (i = 0; i < 26; i++) s = s s; print length(s) }'`;
    const limited = await LocalWorkspace.open(dir, { sandbox: { memoryBytes: 64 * 1024 * 1024 }, recovery: false });
    const denied = await limited.exec(grow, { timeoutMs: 20_000 });
    expect(denied.exitCode).not.toBe(0);
    expect(denied.output).not.toContain("67108864");
    expect(denied.output).toMatch(/memory|allocate/i);
    const allowed = await childA.exec(grow, { timeoutMs: 20_000 });
    expect(allowed.output.trim()).toBe("67108864");
  });

  it("stops a runaway node process at the memory limit", async () => {
    const limited = await LocalWorkspace.open(dir, { sandbox: { memoryBytes: 512 * 1024 * 1024 }, recovery: false });
    const result = await limited.exec(`node -e "const a = []; for (;;) a.push(Buffer.alloc(1 << 20, 1))"`, { timeoutMs: 30_000 });
    expect(result.timedOut).toBe(false);
    expect(result.exitCode).not.toBe(0);
    expect(result.durationMs).toBeLessThan(20_000);
  });

  it("limits address space only when asked, since WebAssembly reserves far more than it uses", async () => {
    // Node's fetch and many build tools use WebAssembly; each memory reserves ~10 GiB of address space.
    const wasm = `node -e "const ms = []; for (let i = 0; i < 4; i++) ms.push(new WebAssembly.Memory({ initial: 1 })); console.log('wasm ok')"`;
    const byDefault = await childA.exec(wasm, { timeoutMs: 20_000 });
    expect(byDefault.output.trim(), byDefault.output).toBe("wasm ok");
    const tight = await LocalWorkspace.open(dir, { sandbox: { addressSpaceBytes: 8 * 1024 ** 3 }, recovery: false });
    const refused = await tight.exec(wasm, { timeoutMs: 20_000 });
    expect(refused.exitCode).not.toBe(0);
    expect(refused.output).toContain("could not allocate memory");
  });

  it("kills the whole process tree on timeout", async () => {
    const needle = `31.${Date.now() % 100000}`;
    const result = await childA.exec(`sleep ${needle} & sleep 30`, { timeoutMs: 500 });
    expect(result.timedOut).toBe(true);
    await waitFor(() => hostPidsRunning(needle).length === 0, "the background sleep to die");
  });

  it("kills the whole process tree on abort", async () => {
    const needle = `32.${Date.now() % 100000}`;
    const controller = new AbortController();
    const pending = childA.exec(`sh -c 'sleep ${needle} & wait'`, { signal: controller.signal });
    await waitFor(() => hostPidsRunning(needle).length > 0, "the sleep to start");
    controller.abort();
    const result = await pending;
    expect(result.aborted).toBe(true);
    await waitFor(() => hostPidsRunning(needle).length === 0, "the sleep to die");
  });

  it("mounts the worktree read-only for a read-only command", async () => {
    const name = `keen-ro-${marker()}.txt`;
    const write = await childA.exec(`echo x > ${name}`, { readOnly: true });
    expect(write.exitCode).not.toBe(0);
    expect(write.output).toContain("Read-only file system");
    expect(existsSync(join(childA.root, name))).toBe(false);
    const read = await childA.exec("cat README.md && git status --short && echo scratch > /tmp/x && cat /tmp/x", { readOnly: true });
    expect(read.exitCode, read.output).toBe(0);
    expect(read.output).toContain("# sandbox");
    expect(read.output).toContain("scratch");
    const runner = sandboxRunner({ readOnly: true });
    const always = await runner.run(`touch ${name}`, { cwd: childA.root, root: childA.root, timeoutMs: 5_000, maxOutputBytes: 1_000 });
    expect(always.exitCode).not.toBe(0);
    expect(existsSync(join(childA.root, name))).toBe(false);
  });

  it("gives EXPLORE and PLAN a run_command that says it is read-only and is", async () => {
    const tool = readOnlyTools().find((t) => t.name === "run_command")!;
    expect(tool.readOnly).toBe(true);
    expect(tool.description).toMatch(/read-only/);
    expect(runCommandTool().description).not.toMatch(/read-only/);
    const context = { workspace: childA, signal: new AbortController().signal, agentId: "A", toolUseId: "toolu_1" };
    const refused = await executeTool(tool, { command: "echo x > ro-tool.txt" }, context);
    expect(refused.isError).toBe(true);
    expect(refused.content).toContain("Read-only file system");
    expect(existsSync(join(childA.root, "ro-tool.txt"))).toBe(false);
    const listed = await executeTool(tool, { command: "ls" }, context);
    expect(listed).toMatchObject({ isError: false });
    expect(listed.content).toContain("README.md");
  });
});

describe("without bubblewrap", () => {
  it("reports the sandbox as unavailable, with how to fix it", async () => {
    expect(await isSandboxAvailable({ bwrapPath: "/nonexistent/bwrap" })).toBe(false);
    expect(await isSandboxAvailable({ bwrapPath: "/bin/false" })).toBe(false);
    const runner = sandboxRunner({ bwrapPath: "/nonexistent/bwrap" });
    const dir = await createTestRepo();
    const error = await runner.run("true", { cwd: dir, timeoutMs: 1_000, maxOutputBytes: 100 }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(SandboxUnavailableError);
    expect(error).toMatchObject({ code: "sandbox_unavailable" });
    expect((error as Error).message).toMatch(/bubblewrap/);
    expect((error as Error).message).toMatch(/sandbox: false/);
  });

  it("makes LocalWorkspace.open refuse unless the caller opts out with sandbox: false", async () => {
    const dir = await createTestRepo();
    await expect(LocalWorkspace.open(dir, { sandbox: { bwrapPath: "/nonexistent/bwrap" } })).rejects.toBeInstanceOf(SandboxUnavailableError);
    await expect(LocalWorkspace.open(dir, { sandbox: { bwrapPath: "/bin/false" } })).rejects.toMatchObject({ code: "sandbox_unavailable" });
    const open = await LocalWorkspace.open(dir, { sandbox: false });
    expect(open.sandboxed).toBe(false);
    expect((await open.exec("echo direct")).output).toBe("direct\n");
  });

  it("refuses read-only commands rather than run them unconfined", async () => {
    const dir = await createTestRepo();
    const open = await LocalWorkspace.open(dir, { sandbox: false });
    await expect(open.exec("touch x", { readOnly: true })).rejects.toMatchObject({ code: "read_only_unavailable" });
    expect(existsSync(join(dir, "x"))).toBe(false);
    const tool = readOnlyTools().find((t) => t.name === "run_command")!;
    const result = await executeTool(tool, { command: "touch x" }, { workspace: open, signal: new AbortController().signal, agentId: "root", toolUseId: "t" });
    expect(result.isError).toBe(true);
    expect(result.content).toMatch(/need the sandbox/);
    expect(existsSync(join(dir, "x"))).toBe(false);
  });

  it("validates sandbox options when the runner is created", () => {
    expect(() => sandboxRunner({ cpuSeconds: -1 })).toThrow(/Invalid sandbox options/);
    expect(() => sandboxRunner({ extraWritablePaths: ["relative/path"] })).toThrow(/absolute/);
    expect(() => sandboxRunner({ cpuSeconds: Infinity, memoryBytes: Infinity })).not.toThrow();
  });
});

// A commit made by keen after sandboxed work keeps the tree clean (no stray files from the sandbox).
describe("sandbox leaves no traces in the checkout", () => {
  it("adds nothing to git status", async () => {
    const dir = await createTestRepo();
    const ws = await LocalWorkspace.open(dir);
    await ws.exec("ls >/dev/null; cat README.md >/dev/null");
    expect((await execa("git", ["status", "--porcelain"], { cwd: dir })).stdout).toBe("");
  });
});
