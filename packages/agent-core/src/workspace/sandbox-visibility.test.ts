import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, stat, writeFile } from "node:fs/promises";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";

const marker = () => randomBytes(8).toString("hex");

describe("what a fork's sandbox shows of the user's repository", () => {
  it("hides the user's checkout: untracked and ignored files there (a .env) are not readable from a fork", async () => {
    const dir = await createTestRepo({ "README.md": "# app\n", ".gitignore": ".env\n" });
    const secret = `SECRET_${marker()}`;
    await writeFile(join(dir, ".env"), `API_TOKEN=${secret}\n`);
    await writeFile(join(dir, "notes-untracked.txt"), `draft ${secret}\n`);
    const ws = await LocalWorkspace.open(dir);
    const child = await ws.fork(`vis-${marker()}`);
    const probe = await child.exec(`cat '${join(dir, ".env")}' '${join(dir, "notes-untracked.txt")}'; ls -a '${dir}'; git log --oneline -1`);
    expect(probe.output).not.toContain(secret);
    // git inside the fork still works: the common git dir stays readable.
    expect(probe.output).toContain("initial");
    // And the checkout's node_modules stays reachable the way Node finds it, walking up from the worktree.
    await mkdir(join(dir, "node_modules", "leftish"), { recursive: true });
    await writeFile(join(dir, "node_modules", "leftish", "index.js"), "module.exports = 'found leftish';\n");
    const resolved = await child.exec(`node -e "console.log(require('leftish'))"`);
    expect(resolved.output).toContain("found leftish");
    await child.dispose?.();
  });

  it("does not show credentials kept in the repository's git config (remote URL tokens, http extra headers)", async () => {
    const dir = await createTestRepo({ "README.md": "# app\n" });
    const token = `ghp_${marker()}${marker()}${marker()}`.slice(0, 40);
    const password = `pw${marker()}`; // no token shape: only its place in a URL marks it
    await execa("git", ["remote", "add", "origin", `https://x-access-token:${token}@github.com/acme/app.git`], { cwd: dir });
    await execa("git", ["config", "http.https://github.com/.extraheader", `AUTHORIZATION: basic ${token}`], { cwd: dir });
    await execa("git", ["config", `url.https://ci:${password}@git.example.com/.insteadOf`, "https://git.example.com/"], { cwd: dir });
    await execa("git", ["config", "credential.helper", `store --file=/tmp/${token}`], { cwd: dir });
    const ws = await LocalWorkspace.open(dir);
    const child = await ws.fork(`cfg-${marker()}`);
    const probe = await child.exec(`cat '${join(dir, ".git", "config")}'; git config --list; git remote -v; git log --oneline -1`);
    expect(probe.output).not.toContain(token);
    expect(probe.output).not.toContain(password);
    expect(probe.output).toContain("initial");
    // The remote is still there, without its user name and password.
    expect(probe.output).toContain("origin\thttps://github.com/acme/app.git (fetch)");
    // Also for an agent working in the main checkout itself, where .git is a folder of the root.
    const inMain = await ws.exec("cat .git/config; git config --get-regexp 'http.*'; git status --short; echo status=$?");
    expect(inMain.output).not.toContain(token);
    expect(inMain.output).toContain("status=0");
    // keen's own git on the host still reads the real config.
    expect((await execa("git", ["config", "remote.origin.url"], { cwd: dir })).stdout).toContain(token);
    await child.dispose?.();
  });

  it("shows only a sanitized copy of the system git config, in both host views, and no user git config", async () => {
    const dir = await createTestRepo({ "README.md": "# app\n" });
    const token = `ghp_${marker()}${marker()}${marker()}`.slice(0, 40);
    const password = `pw${marker()}`;
    // Stands in for /etc/gitconfig (the real one is never written): the runner reads it as its source.
    const source = join(await mkdtemp(join(tmpdir(), "keen-etc-")), "gitconfig");
    await writeFile(
      source,
      [
        "[core]\n\tautocrlf = input\n",
        `[credential]\n\thelper = store --file=/srv/${token}\n`,
        `[http "https://github.com/"]\n\textraheader = AUTHORIZATION: basic ${token}\n`,
        `[url "https://ci:${password}@git.example.com/"]\n\tinsteadOf = https://git.example.com/\n`,
        `[url "https://git.mirror.example/"]\n\tinsteadOf = https://ci:${password}@git.example.org/\n`,
      ].join(""),
    );
    const probe = [
      "cat /etc/gitconfig",
      "git config --system --list",
      "git config --global --list; echo global=$?",
      'echo "home=$HOME xdg=${XDG_CONFIG_HOME:-unset} entries=$(ls -A "$HOME" | wc -l)"',
      "cat ~/.gitconfig ~/.config/git/config /root/.gitconfig 2>/dev/null; echo user-configs=$?",
    ].join("; ");
    for (const hostView of ["minimal", "full"] as const) {
      const ws = await LocalWorkspace.open(dir, { sandbox: { hostView, systemGitConfig: source, hidePaths: [homedir()] } });
      const result = await ws.exec(probe);
      expect(result.output, hostView).not.toContain(token);
      expect(result.output, hostView).not.toContain(password);
      expect(result.output, hostView).toContain("core.autocrlf=input");
      expect(result.output, hostView).toContain("global=1");
      expect(result.output, hostView).toMatch(/home=\/tmp\/home xdg=unset entries=0\n/);
      expect(result.output, hostView).toContain("user-configs=1");
    }
    // The host's own git still reads the source as it is.
    expect((await execa("git", ["config", "--file", source, "credential.helper"])).stdout).toContain(token);
  });
});

describe("what of the kernel's /proc a sandboxed command can change", () => {
  it("writes no file of /proc outside its own processes, also as root (sysrq-trigger would reboot the host)", async () => {
    const dir = await createTestRepo({ "README.md": "# app\n" });
    const ws = await LocalWorkspace.open(dir);
    // Every regular file below /proc (not per-process entries) that access(2) says this user may write.
    const probe = await ws.exec(
      'find /proc -maxdepth 4 \\( -path "/proc/[0-9]*" -o -path /proc/self -o -path /proc/thread-self \\) -prune -o -type f -perm -u+w -print 2>/dev/null | while read -r f; do [ -w "$f" ] && echo "writable $f"; done; echo probed',
    );
    expect(probe.output).toContain("probed");
    expect(probe.output.split("\n").filter((line) => line.startsWith("writable"))).toEqual([]);
  });
});

describe("how much a sandboxed command may write into one file", () => {
  it("is bounded by default, and a command over maxFileBytes is stopped with the file cut at the limit", async () => {
    const dir = await createTestRepo({ "README.md": "# app\n" });
    const byDefault = await LocalWorkspace.open(dir);
    // 512-byte blocks: 1 GiB.
    expect((await byDefault.exec("ulimit -f")).output.trim()).toBe(String((1024 ** 3) / 512));
    const ws = await LocalWorkspace.open(dir, { sandbox: { maxFileBytes: 1024 * 1024 } });
    const stream = await ws.exec("head -c 3000000 /dev/zero > big.bin; echo after");
    expect(stream.output).toContain("File size limit exceeded");
    expect((await stat(join(dir, "big.bin"))).size).toBeLessThanOrEqual(1024 * 1024);
    const one = await ws.exec("exec head -c 3000000 /dev/zero > big2.bin");
    expect(one.output).toContain("[stopped by the sandbox: file size limit of 1048576 bytes reached]");
    const reserve = await ws.exec("fallocate -l 100M huge.bin; echo rc=$?");
    expect(reserve.output).not.toContain("rc=0");
    expect((await stat(join(dir, "huge.bin")).catch(() => ({ size: 0 }))).size).toBeLessThanOrEqual(1024 * 1024);
  });
});

describe("how much memory a sandboxed command may use in all", () => {
  it("bounds the whole command, not only each process: many processes under the per-process limit cannot add up past it", async () => {
    const dir = await createTestRepo({ "README.md": "# app\n" });
    const mib = 1024 * 1024;
    const ws = await LocalWorkspace.open(dir, { sandbox: { totalMemoryBytes: 256 * mib } });
    // Four processes hold 120 MiB each at once (480 MiB in all), each well under the 8 GiB per-process limit.
    const hog = `node -e "const b = Buffer.alloc(120 * 1024 * 1024, 1); setTimeout(() => console.log('held', b.length), 1500)"`;
    const result = await ws.exec(`for i in 1 2 3 4; do ${hog} & done; wait; echo finished`, { timeoutMs: 60_000 });
    expect(result.output).toContain("finished");
    const held = result.output.split("\n").filter((line) => line.startsWith("held")).length;
    expect(held, result.output).toBeLessThan(4);
    // The same command fits under the default.
    const roomy = await LocalWorkspace.open(dir);
    const fits = await roomy.exec(`for i in 1 2 3 4; do ${hog} & done; wait; echo finished`, { timeoutMs: 60_000 });
    expect(fits.output.split("\n").filter((line) => line.startsWith("held")).length, fits.output).toBe(4);
    // No memory cgroup is left behind.
    const leftovers = await execa("sh", ["-c", `find /sys/fs/cgroup -maxdepth 5 -type d -name 'keen-${process.pid}-*' 2>/dev/null | wc -l`]);
    expect(leftovers.stdout.trim()).toBe("0");
  });
});

describe("kernel interfaces a sandboxed command cannot reach", () => {
  it("refuses new user namespaces and io_uring (their kernel surface is where sandbox escapes live), while threads still work", async () => {
    const dir = await createTestRepo({ "README.md": "# app\n" });
    const ws = await LocalWorkspace.open(dir);
    const script = `
import ctypes, os, platform, threading
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
unshare = {"x86_64": 272, "aarch64": 97}[platform.machine()]
print("unshare", libc.syscall(unshare, CLONE_NEWUSER), os.strerror(ctypes.get_errno()))
params = ctypes.create_string_buffer(120)
print("io_uring_setup", libc.syscall(425, 8, params), os.strerror(ctypes.get_errno()))
box = []
t = threading.Thread(target=lambda: box.append("thread ran"))
t.start(); t.join()
print(box[0])
`;
    await writeFile(join(dir, "probe.py"), script);
    const result = await ws.exec("python3 probe.py; unshare -U true; echo unshare-rc=$?; node -e \"new (require('worker_threads').Worker)('console.log(42)', { eval: true })\"");
    expect(result.output).toContain("unshare -1 Operation not permitted");
    expect(result.output).toContain("io_uring_setup -1 Operation not permitted");
    expect(result.output).toContain("thread ran");
    expect(result.output).not.toContain("unshare-rc=0");
    expect(result.output).toContain("42");
  });
});
