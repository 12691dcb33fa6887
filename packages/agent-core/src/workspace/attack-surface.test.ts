import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, open, readdir, readFile, symlink, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { beforeAll, describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo, hostPidsRunning } from "./test-repo.js";

const repoRoot = fileURLToPath(new URL("../../../..", import.meta.url));
const gitIn = async (dir: string, ...args: string[]) => (await execa("git", args, { cwd: dir })).stdout;

describe("keen's file tools never reach the git dir through a link the agent made", () => {
  it("a worktree's read-only .git file cannot be rewritten through `d -> .`", async () => {
    const dir = await createTestRepo();
    const ws = await LocalWorkspace.open(dir);
    const child = await ws.fork("keen/link0001");
    const before = await readFile(join(child.root, ".git"), "utf8");
    // Inside the sandbox the .git file is read-only, but a link to the root is an ordinary file.
    expect((await child.exec("ln -s . d && ln -s .git g && ln -s \"$PWD\" abs")).exitCode).toBe(0);
    for (const path of ["d/.git", "d/d/.git", "abs/.git", "g", "d/.git/x"]) {
      await expect(child.writeFile(path, "gitdir: /tmp/evil\n"), path).rejects.toMatchObject({ code: "path_outside_workspace" });
    }
    await expect(child.readFile("d/.git")).rejects.toMatchObject({ code: "path_outside_workspace" });
    expect(await readFile(join(child.root, ".git"), "utf8")).toBe(before);
    // Ordinary paths through the same link still work.
    await child.writeFile("d/ok.txt", "fine\n");
    expect(await child.readFile("ok.txt")).toBe("fine\n");
  });

  it("a main checkout's git config cannot be written through a link, so no filter of the agent's runs on the host", async () => {
    const dir = await createTestRepo();
    const proof = join(await mkdtemp(join(tmpdir(), "keen-proof-")), "filter-ran");
    const ws = await LocalWorkspace.open(dir);
    expect((await ws.exec("ln -s . d")).exitCode).toBe(0);
    const config = await readFile(join(dir, ".git", "config"), "utf8");
    await expect(ws.writeFile("d/.git/config", `${config}[filter "x"]\n\tclean = touch ${proof}; cat\n`)).rejects.toMatchObject({ code: "path_outside_workspace" });
    await expect(ws.writeFile("d/.git/hooks/post-commit", "#!/bin/sh\n")).rejects.toMatchObject({ code: "path_outside_workspace" });
    await ws.writeFile(".gitattributes", "* filter=x\n");
    await ws.writeFile("a.txt", "a\n");
    await ws.commit("work");
    expect(existsSync(proof)).toBe(false);
    expect(await readFile(join(dir, ".git", "config"), "utf8")).toBe(config);
  });
});

describe("commit with names git takes but UTF-8 does not", () => {
  it("a file whose name is not valid UTF-8 never makes the commit fail; the rest is committed and the name reported", async () => {
    const dir = await createTestRepo();
    const ws = await LocalWorkspace.open(dir);
    const child = await ws.fork("keen/name0001");
    const made = await child.exec("printf x > \"$(printf 'bad\\377name')\" && echo ok > good.txt && printf y > \"$(printf -- '-lead\\nline')\"");
    expect(made.exitCode, made.output).toBe(0);
    const { sha, skipped } = await child.commit("work with odd names");
    expect(sha).toMatch(/^[0-9a-f]{40}$/);
    const committed = (await gitIn(dir, "ls-tree", "-r", "-z", "--name-only", sha!)).split("\0").filter(Boolean).sort();
    expect(committed).toEqual(["-lead\nline", "README.md", "good.txt"]);
    expect(skipped).toEqual([expect.objectContaining({ reason: "invalid_name" })]);
  });
});

describe("commit with names git itself refuses", () => {
  it("`.GIT/config`, `.git.`, `.git `, `GIT~1/…` and a `.gitmodules` link are left out; the rest is committed", async () => {
    const dir = await createTestRepo();
    const ws = await LocalWorkspace.open(dir);
    const child = await ws.fork("keen/refused0001");
    const made = await child.exec("mkdir .GIT GIT~1 && echo x > .GIT/config && echo x > GIT~1/config && echo x > '.git.' && echo x > '.git ' && ln -s good.txt .gitmodules && echo ok > good.txt");
    expect(made.exitCode, made.output).toBe(0);
    const { sha, skipped } = await child.commit("work");
    expect(sha).toMatch(/^[0-9a-f]{40}$/);
    expect((await gitIn(dir, "ls-tree", "-r", "--name-only", sha!)).split("\n").sort()).toEqual(["README.md", "good.txt"]);
    expect(skipped.map(({ path, reason }) => `${path}:${reason}`).sort()).toEqual([".GIT/config:invalid_name", ".git :invalid_name", ".git.:invalid_name", ".gitmodules:invalid_name", "GIT~1/config:invalid_name"]);
  });
});

describe("what the sandbox can fill", () => {
  let ws: LocalWorkspace;
  beforeAll(async () => {
    ws = await LocalWorkspace.open(await createTestRepo(), { sandbox: { tmpBytes: 8 * 1024 * 1024 } });
  });

  it("/dev/shm and /run are bounded like /tmp, and /dev itself is read-only", async () => {
    for (const path of ["/dev/shm/big", "/run/big", "/tmp/big"]) {
      const result = await ws.exec(`head -c 20000000 /dev/zero > ${path}; ls -l ${path}`);
      expect(result.output, path).toMatch(/No space left on device/);
    }
    const dev = await ws.exec("echo x > /dev/newfile");
    expect(dev.exitCode).not.toBe(0);
    expect(dev.output).toMatch(/Read-only file system/);
    // Devices still work.
    const devices = await ws.exec("echo x > /dev/null && head -c 4 /dev/urandom | wc -c && python3 -c 'import os; os.openpty()' 2>&1 || true");
    expect(devices.output).toContain("4");
    expect(devices.output).not.toMatch(/Error|denied/);
  });
});

describe("the host kernel's settings and state", () => {
  it("no sysctl of the host can be written from inside, also as root (core_pattern would run a program on the host)", async () => {
    const ws = await LocalWorkspace.open(await createTestRepo());
    // Each write puts back the value already there, so the host is unchanged even if the sandbox failed.
    for (const path of ["/proc/sys/vm/swappiness", "/proc/sys/kernel/core_pattern", "/proc/sys/fs/protected_symlinks"]) {
      const result = await ws.exec(`v=$(cat ${path}) && printf '%s\n' "$v" > ${path}; echo "rc=$?"`);
      expect(result.output, path).toMatch(/Read-only file system|Permission denied/);
      expect(result.output, path).not.toContain("rc=0");
    }
    // Still readable: tools read limits from there.
    expect((await ws.exec("cat /proc/sys/kernel/pid_max")).exitCode).toBe(0);
  });
});

describe("the kernel keyring", () => {
  it("cannot be read or written from inside: no key outlives a command or passes between sandboxes", async () => {
    const ws = await LocalWorkspace.open(await createTestRepo());
    const name = `keen-probe-${Math.floor(Math.random() * 1e9)}`;
    // add_key, keyctl and request_key through syscall(2), for x86-64 and arm64, then the 32-bit x86 entry point.
    const script = `
import ctypes, platform, os
libc = ctypes.CDLL(None, use_errno=True)
nr = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]
key = libc.syscall(nr[0], b"user", b"${name}", b"secret", 6, -4)
print("add_key", key, os.strerror(ctypes.get_errno()))
print("keyctl", libc.syscall(nr[1], 0, -4, 0, 0, 0), os.strerror(ctypes.get_errno()))
`;
    await writeFile(join(ws.root, "keys.py"), script);
    const result = await ws.exec("python3 keys.py; cat /proc/keys");
    expect(result.output).toMatch(/add_key -1 Operation not permitted/);
    expect(result.output).toMatch(/keyctl -1 Operation not permitted/);
    expect(await readFile("/proc/keys", "utf8").catch(() => "")).not.toContain(name);
  });
});

describe("file descriptors keen inherited", () => {
  it("never reach a sandboxed command: an inherited folder would open the whole host", async () => {
    const dir = await createTestRepo();
    const outside = await mkdtemp(join(tmpdir(), "keen-outside-"));
    await writeFile(join(outside, "secret.txt"), "host secret\n");
    const folder = await open(outside, "r");
    const file = await open(join(outside, "secret.txt"), "r");
    try {
      const helper = fileURLToPath(new URL("./testing/exec-with-inherited-fds.ts", import.meta.url));
      const command = "ls /proc/self/fd; for n in 40 41 200; do cat /proc/self/fd/$n/secret.txt /proc/self/fd/$n 2>/dev/null; done; echo end";
      // The helper (a keen process) inherits the folder as fds 40 and 200 and the file as 41.
      const extra: Array<"ignore" | number> = [];
      for (let fd = 3; fd <= 200; fd++) extra.push("ignore");
      extra[40 - 3] = folder.fd;
      extra[41 - 3] = file.fd;
      extra[200 - 3] = folder.fd;
      // node's own spawn: execa takes no raw descriptors for extra stdio slots.
      const result = spawnSync(process.execPath, ["--import", "tsx", helper, dir, command], { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe", ...extra], encoding: "utf8" });
      expect(result.stdout, result.stderr).toContain("end");
      expect(result.stdout).not.toContain("host secret");
      const fds = result.stdout.split("\n").filter((line) => /^\d+$/.test(line)).map(Number);
      expect(fds.filter((fd) => fd > 3)).toEqual([]);
    } finally {
      await folder.close();
      await file.close();
    }
  });
});

describe("globs from the model", () => {
  it("match in linear time: a backtracking pattern over long names cannot stall every agent", async () => {
    const dir = await createTestRepo({ [`${"a".repeat(200)}/${"a".repeat(250)}`]: "x\n", "src/app.ts": "x\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const started = performance.now();
    expect(await ws.listFiles({ pattern: "*a*a*a*a*a*a*a*a*a*a*a*b" })).toEqual([]);
    expect(await ws.listFiles({ pattern: "**/a*a*a*a*a*a*a*a*/**/a*a*a*a*a*a*a*b" })).toEqual([]);
    // picomatch took 4.8 s for the first pattern on one 255-character name; this bound is generous.
    expect(performance.now() - started).toBeLessThan(2000);
    expect(await ws.listFiles({ pattern: "src/**/*.{ts,tsx}" })).toEqual(["src/app.ts"]);
    await expect(ws.listFiles({ pattern: "{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}" })).rejects.toMatchObject({ code: "invalid_glob" });
  });
});

describe("things that hold", () => {
  it("a daemon started by a command dies with it", async () => {
    const ws = await LocalWorkspace.open(await createTestRepo());
    const tag = `3${Math.floor(Math.random() * 1e6)}`;
    const result = await ws.exec(`setsid sh -c 'sleep ${tag} &'; nohup sleep ${tag} >/dev/null 2>&1 & trap '' TERM; echo started`);
    expect(result.output).toContain("started");
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(hostPidsRunning(tag)).toEqual([]);
  });

  it("a hard link to anything outside the worktree cannot be made from inside", async () => {
    const dir = await createTestRepo();
    const ws = await LocalWorkspace.open(dir);
    const child = await ws.fork("keen/hard0001");
    for (const target of ["/usr/bin/env", join(dir, ".git", "config"), join(dir, "README.md"), "/etc/passwd"]) {
      const result = await child.exec(`ln '${target}' linked`);
      expect(result.exitCode, `${target}: ${result.output}`).not.toBe(0);
      // The main checkout's files are not even visible from a fork (only its git dir is).
      expect(result.output).toMatch(/Invalid cross-device link|Operation not permitted|Read-only|No such file/);
    }
  });

  it("the common git dir is read-only from inside: objects, refs, packed-refs and worktree entries", async () => {
    const dir = await createTestRepo();
    const ws = await LocalWorkspace.open(dir);
    const child = await ws.fork("keen/common0001");
    const common = join(dir, ".git");
    const writes = [
      `echo x > '${common}/packed-refs'`,
      `echo 0000000000000000000000000000000000000000 > '${common}/refs/heads/main'`,
      `mkdir '${common}/objects/zz'`,
      `echo gitdir: /tmp > '${common}/worktrees/common0001/gitdir'`,
      `echo x > '${common}/worktrees/common0001/HEAD'`,
      `echo x > '${common}/config'`,
      `echo x > '${common}/info/attributes'`,
    ];
    for (const command of writes) {
      const result = await child.exec(command);
      expect(result.exitCode, command).not.toBe(0);
    }
    await symlink("/etc", join(dir, "outside-link")).catch(() => {});
    expect((await child.exec("git status --porcelain")).exitCode).toBe(0);
  });

  it("a FIFO in place of a tracked file does not block commit or merge", async () => {
    const dir = await createTestRepo({ "a.txt": "a\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const child = await ws.fork("keen/fifo0001");
    await execa("rm", [join(child.root, "a.txt")]);
    execFileSync("mkfifo", [join(child.root, "a.txt")]);
    await writeFile(join(child.root, "b.txt"), "b\n");
    const { skipped } = await child.commit("fifo");
    expect(skipped).toContainEqual(expect.objectContaining({ path: "a.txt", reason: "not_regular" }));
  });
});

describe("a merge left half done by a killed keen", () => {
  async function conflictedParent() {
    const dir = await createTestRepo({ "shared.txt": "base\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const parent = await ws.fork("keen/kill0001");
    const child = await ws.fork("keen/kill0001-agents/summon-A");
    await child.writeFile("shared.txt", "child\n");
    await child.commit("child");
    await parent.writeFile("shared.txt", "parent\n");
    await parent.commit("parent");
    await parent.writeFile("notes.txt", "agent wip\n");
    expect(await parent.merge("keen/kill0001-agents/summon-A", "merge")).toMatchObject({ status: "conflict" });
    return { dir, parent };
  }

  it("is rolled back by recovery, never salvaged as work: its conflict markers do not reach a commit", async () => {
    const { dir } = await conflictedParent();
    // The owner died (a lease naming this pid with another start time is a dead process's).
    for (const name of await readdir(join(dir, ".git", "worktrees"))) {
      await writeFile(join(dir, ".git", "worktrees", name, "locked"), `keen lease pid=${process.pid} start=1 host=${hostname().replace(/\s+/g, "") || "-"}`);
    }
    const again = await LocalWorkspace.open(dir, { sandbox: false });
    expect(again.recovered.salvagedBranches).toEqual(["keen/kill0001"]);
    const resumed = await again.fork("keen/kill0001", { reattach: true });
    expect(await resumed.readFile("shared.txt")).toBe("parent\n");
    expect(await resumed.readFile("notes.txt")).toBe("agent wip\n");
    const { sha } = await resumed.commit("after resume");
    expect(await gitIn(dir, "show", `${sha}:shared.txt`)).toBe("parent");
    // An ordinary commit on the parent's work, not a merge commit with the child's half.
    expect((await gitIn(dir, "rev-list", "--parents", "-n", "1", sha!)).split(" ")).toHaveLength(2);
  });

  it("commit refuses while paths are unmerged, rather than record markers as a resolution", async () => {
    const { parent } = await conflictedParent();
    await expect(parent.commit("oops")).rejects.toMatchObject({ code: "merge_unresolved" });
    await parent.abortMerge();
    expect((await parent.commit("wip")).sha).toMatch(/^[0-9a-f]{40}$/);
  });
});
