import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";

const MiB = 1024 * 1024;

/** Bytes of the files directly in `dir` whose names start with `prefix`, and how many there are. */
async function filesLike(dir: string, prefix: string): Promise<{ count: number; bytes: number }> {
  const names = (await readdir(dir)).filter((name) => name.startsWith(prefix));
  let bytes = 0;
  for (const name of names) bytes += (await stat(join(dir, name))).size;
  return { count: names.length, bytes };
}

describe("how much of the worktree's disk a sandboxed command may fill", () => {
  it("is bounded in bytes: many files, each under the per-file limit, cannot add up past maxDiskBytes", async () => {
    const dir = await createTestRepo();
    const ws = await LocalWorkspace.open(dir, { sandbox: { maxDiskBytes: 32 * MiB } });
    const child = await ws.fork("keen/disk0001");
    // 64 files of 4 MiB (256 MiB), each far under maxFileBytes.
    const fill = "for i in $(seq 1 64); do head -c 4194304 /dev/zero > fill-$i || exit 1; sleep 0.05; done; echo finished";
    const result = await child.exec(fill, { timeoutMs: 60_000 });
    expect(result.output).not.toContain("finished");
    expect(result.output).toMatch(/\[stopped by the sandbox: it took more than 33554432 bytes on the worktree's disk/);
    expect(result.exitCode).not.toBe(0);
    const written = await filesLike(child.root, "fill-");
    expect(written.bytes, `${written.count} files`).toBeLessThan(128 * MiB);
    // The next command starts with a fresh allowance, and ordinary work fits.
    const small = await child.exec("head -c 1048576 /dev/zero > small.bin && echo ok");
    expect(small.output).toBe("ok\n");
  });

  it("is bounded in files: an endless loop of empty files stops at maxDiskFiles", async () => {
    const dir = await createTestRepo();
    const ws = await LocalWorkspace.open(dir, { sandbox: { maxDiskFiles: 2000 } });
    const child = await ws.fork("keen/disk0002");
    const result = await child.exec("mkdir many && cd many && i=0; while :; do i=$((i+1)); : > f$i; done", { timeoutMs: 20_000 });
    expect(result.timedOut).toBe(false);
    expect(result.output).toMatch(/\[stopped by the sandbox: it took more than 2000 files on the worktree's disk/);
    const made = await filesLike(join(child.root, "many"), "f");
    expect(made.count).toBeGreaterThan(100);
    expect(made.count).toBeLessThan(200_000);
  });
});
