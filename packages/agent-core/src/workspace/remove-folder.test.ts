import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, realpath, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { removeFolder } from "./remove-folder.js";

const repoRoot = fileURLToPath(new URL("../../../..", import.meta.url));

/** A folder of `files` files in subfolders of 50, with links out to `outside` at the top and deep down. */
async function tree(files: number, outside: string): Promise<string> {
  const dir = await realpath(await mkdtemp(join(tmpdir(), "keen-tree-")));
  for (let i = 0; i < files; i++) {
    await mkdir(join(dir, `d${Math.floor(i / 50)}`), { recursive: true });
    await writeFile(join(dir, `d${Math.floor(i / 50)}`, `f${i}`), "x\n");
  }
  await mkdir(join(dir, "deep", "er"), { recursive: true });
  await symlink(outside, join(dir, "out"));
  await symlink(outside, join(dir, "deep", "er", "out"));
  await symlink(join(outside, "keep.txt"), join(dir, "deep", "file-link"));
  return dir;
}

describe("removeFolder", () => {
  it("deletes small and large folders (in this thread and in the worker) without following links out", async () => {
    const outside = await realpath(await mkdtemp(join(tmpdir(), "keen-outside-")));
    await mkdir(join(outside, "sub"));
    await writeFile(join(outside, "keep.txt"), "keep\n");
    await writeFile(join(outside, "sub", "keep.txt"), "keep\n");
    for (const files of [10, 600]) {
      const dir = await tree(files, outside);
      await removeFolder(dir);
      expect(existsSync(dir), `${files} files`).toBe(false);
      expect(await readFile(join(outside, "keep.txt"), "utf8")).toBe("keep\n");
      expect(await readFile(join(outside, "sub", "keep.txt"), "utf8")).toBe("keep\n");
    }
    // Two at once through the worker, and a folder that is not there.
    const [a, b] = await Promise.all([tree(300, outside), tree(300, outside)]);
    await Promise.all([removeFolder(a), removeFolder(b), removeFolder(join(a, "gone"))]);
    expect([existsSync(a), existsSync(b)]).toEqual([false, false]);
  });

  it("does not keep the process alive once the worker is idle", async () => {
    const outside = await realpath(await mkdtemp(join(tmpdir(), "keen-outside-")));
    const dir = await tree(600, outside);
    const script = `
      import { removeFolder } from ${JSON.stringify(fileURLToPath(new URL("./remove-folder.ts", import.meta.url)))};
      await removeFolder(process.argv[1]);
      console.log("removed");
    `;
    const result = await execa(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script, dir], { cwd: repoRoot, timeout: 30_000 });
    expect(result.stdout).toBe("removed");
    expect(existsSync(dir)).toBe(false);
  });
});
