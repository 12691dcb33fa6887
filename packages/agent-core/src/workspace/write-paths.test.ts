import { lstat, mkdir, mkdtemp, readdir, readFile, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { KeenError } from "../errors.js";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";

/** Paths an agent names for write_file that the file system refuses: each a coded KeenError saying what is wrong. */
describe("writeFile on paths the file system refuses", () => {
  it.each([
    ["the empty path", "", "is_a_directory"],
    [".", ".", "is_a_directory"],
    ["sub/..", "sub/..", "is_a_directory"],
    ["a path of 6000 characters", `${"a/".repeat(3000)}f.txt`, "path_too_long"],
    ["a file name of 300 characters", `${"n".repeat(300)}.txt`, "path_too_long"],
    ["a folder name of 300 characters", `${"d".repeat(300)}/f.txt`, "path_too_long"],
    ["README.md/inner.txt", "README.md/inner.txt", "not_a_directory"],
    ["sub/../README.md/x/y", "sub/../README.md/x/y", "not_a_directory"],
  ])("%s → %s", async (_label, path, code) => {
    const dir = await createTestRepo({ "README.md": "# app\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const error = await ws.writeFile(path, "text").then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(KeenError);
    expect((error as KeenError).code).toBe(code);
    expect((error as KeenError).message).not.toContain(dir);
    expect(await readFile(join(dir, "README.md"), "utf8")).toBe("# app\n");
  });
});

/**
 * writeFile and exists judge a path by what is on disk once: the deepest part that exists, with
 * its links resolved. Each case is a layout an agent (or a command it ran) could leave behind.
 */
describe("writeFile and exists through folders and links", () => {
  async function layout() {
    const dir = await createTestRepo({ "README.md": "# app\n", "src/a.ts": "a\n" });
    const outside = await mkdtemp(join(tmpdir(), "keen-outside-"));
    await writeFile(join(outside, "secret.txt"), "secret\n");
    await symlink(join(outside, "secret.txt"), join(dir, "to-secret"));
    await symlink(outside, join(dir, "to-outside"));
    await symlink("src", join(dir, "to-src"));
    await symlink("src/a.ts", join(dir, "to-a"));
    await symlink("missing.txt", join(dir, "dangling"));
    await symlink(".git", join(dir, "to-git"));
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    return { dir, outside, ws };
  }
  const codeOf = (promise: Promise<unknown>) => promise.then(() => "ok", (error: unknown) => (error instanceof KeenError ? error.code : String(error)));

  it("writes into a folder that is there and into folders it makes, leaving no temporary file", async () => {
    const { dir, ws } = await layout();
    await ws.writeFile("src/b.ts", "b\n");
    await ws.writeFile("src/a.ts", "a2\n");
    await ws.writeFile("new/deeper/c.ts", "c\n");
    expect(await readFile(join(dir, "src/b.ts"), "utf8")).toBe("b\n");
    expect(await readFile(join(dir, "src/a.ts"), "utf8")).toBe("a2\n");
    expect(await readFile(join(dir, "new/deeper/c.ts"), "utf8")).toBe("c\n");
    for (const folder of ["src", "new/deeper", "new"]) expect((await readdir(join(dir, folder))).filter((name) => name.startsWith(".keen-"))).toEqual([]);
  });

  it("refuses a write through a link that leads outside or into .git, and changes nothing there", async () => {
    const { dir, outside, ws } = await layout();
    expect(await codeOf(ws.writeFile("to-secret", "x"))).toBe("path_outside_workspace");
    expect(await codeOf(ws.writeFile("to-outside/new.txt", "x"))).toBe("path_outside_workspace");
    expect(await codeOf(ws.writeFile("to-outside/deeper/new.txt", "x"))).toBe("path_outside_workspace");
    expect(await codeOf(ws.writeFile("to-git/config", "x"))).toBe("path_outside_workspace");
    expect(await codeOf(ws.writeFile("to-git/hooks/new", "x"))).toBe("path_outside_workspace");
    expect(await readFile(join(outside, "secret.txt"), "utf8")).toBe("secret\n");
    expect((await readdir(outside)).sort()).toEqual(["secret.txt"]);
    expect(await readdir(join(dir, ".git/hooks")).then((names) => names.includes("new"))).toBe(false);
  });

  it("writes through a link to a folder inside into that folder, and replaces a link to a file with the file", async () => {
    const { dir, ws } = await layout();
    await ws.writeFile("to-src/via-link.ts", "v\n");
    expect(await readFile(join(dir, "src/via-link.ts"), "utf8")).toBe("v\n");
    await ws.writeFile("to-a", "replaced\n");
    expect((await lstat(join(dir, "to-a"))).isFile()).toBe(true);
    expect(await readFile(join(dir, "src/a.ts"), "utf8")).toBe("a\n");
  });

  it("exists: true for files, folders and links to them inside; false for what is missing, dangling or below a file; refuses links outside", async () => {
    const { dir, ws } = await layout();
    await mkdir(join(dir, "empty"));
    const answers: Record<string, boolean | string> = {};
    for (const path of ["README.md", "src", "empty", "to-src", "to-a", "missing.txt", "src/missing/deeper.ts", "dangling", "README.md/inner", "to-src/a.ts", "to-src/nope.ts"]) {
      answers[path] = await ws.exists(path);
    }
    expect(answers).toEqual({
      "README.md": true,
      src: true,
      empty: true,
      "to-src": true,
      "to-a": true,
      "missing.txt": false,
      "src/missing/deeper.ts": false,
      dangling: false,
      "README.md/inner": false,
      "to-src/a.ts": true,
      "to-src/nope.ts": false,
    });
    for (const path of ["to-secret", "to-outside", "to-outside/secret.txt", "to-git", "to-git/config"]) expect(await codeOf(ws.exists(path))).toBe("path_outside_workspace");
  });
});
