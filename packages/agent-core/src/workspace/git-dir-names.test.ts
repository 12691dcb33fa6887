import { existsSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";

const gitIn = async (dir: string, ...args: string[]) => (await execa("git", args, { cwd: dir })).stdout;

/**
 * Names that are `.git` to some file system or to git itself: any case (case-insensitive file
 * systems, macOS's default), with characters HFS+ ignores (U+200C …), with NTFS's trailing dots
 * and spaces or a stream suffix, its 8.3 short name, and `.git` below the root (a nested
 * repository's config runs filters when git enters it).
 */
const GIT_DIR_SPELLINGS = [
  ".GIT/config",
  ".Git/hooks/post-commit",
  ".git./config",
  ".git /config",
  ".git. . /config",
  ".git::$INDEX_ALLOCATION/config",
  "GIT~1/config",
  "git~1/hooks/pre-commit",
  ".g\u200cit/config",
  ".gi\u200dt/config",
  "\u200e.git/config",
  ".git\ufeff/config",
  ".G\u200cIT/config",
  "./.git/config",
  "x/../.GIT/config",
  "sub/.git/config",
  "sub/.GIT/hooks/x",
  "sub/deeper/.g\u200cit/config",
];

describe("file tools and .git in every spelling", () => {
  it("refuse any path whose folder is .git to some file system or to git, and create nothing", async () => {
    const dir = await createTestRepo({ "README.md": "# app\n" });
    const ws = await LocalWorkspace.open(dir, { sandbox: false });
    const before = (await readdir(dir)).sort();
    for (const path of GIT_DIR_SPELLINGS) {
      await expect(ws.writeFile(path, "[core]\n\tfsmonitor = touch /tmp/pwned\n"), JSON.stringify(path)).rejects.toMatchObject({ code: "path_outside_workspace" });
      await expect(ws.readFile(path), JSON.stringify(path)).rejects.toMatchObject({ code: "path_outside_workspace" });
    }
    expect((await readdir(dir)).sort()).toEqual(before);
    expect(existsSync(join(dir, "sub"))).toBe(false);
    // Names that only look alike are ordinary files.
    for (const path of [".github/workflows/ci.yml", ".gitignore", ".gitx/a", "git~2/b", "sub/.gitkeep", "a.git/c", "git/d"]) {
      await ws.writeFile(path, "ok\n");
      expect(await ws.readFile(path), path).toBe("ok\n");
    }
  });

  it("keen's commit leaves out what is .git on macOS or Windows, made with a command", async () => {
    const dir = await createTestRepo({ "README.md": "# app\n" });
    const ws = await LocalWorkspace.open(dir);
    const child = await ws.fork("keen/gitnames01");
    // HFS+ ignores U+200C: on macOS this path is .git/config of the checkout.
    const made = await child.exec("mkdir -p \"$(printf '.g\\342\\200\\214it')\" && echo x > \"$(printf '.g\\342\\200\\214it')/config\" && echo ok > good.txt");
    expect(made.exitCode, made.output).toBe(0);
    const { sha, skipped } = await child.commit("work");
    expect(sha).toMatch(/^[0-9a-f]{40}$/);
    expect((await gitIn(dir, "ls-tree", "-r", "--name-only", sha!)).split("\n").sort()).toEqual(["README.md", "good.txt"]);
    expect(skipped).toEqual([expect.objectContaining({ path: ".g\u200cit/config", reason: "invalid_name" })]);
  });

  it("names git could read as options or pathspec magic are committed as the files they name, and nothing else", async () => {
    const dir = await createTestRepo({ "README.md": "# app\n", "keep.txt": "keep\n" });
    const ws = await LocalWorkspace.open(dir);
    const child = await ws.fork("keen/gitnames02");
    // `:!README.md` as magic would stage everything but README; `*` every file; `--all` an option.
    const names = [":!README.md", ":(glob)**", ":(attr:x)y", "*", "--all", "-n", "[k]eep.txt"];
    const made = await child.exec(`${names.map((name) => `printf '%s' '${name}' > './${name}'`).join(" && ")} && rm keep.txt`);
    expect(made.exitCode, made.output).toBe(0);
    const { sha, skipped } = await child.commit("odd names");
    expect(skipped).toEqual([]);
    const tree = (await gitIn(dir, "ls-tree", "-r", "-z", "--name-only", sha!)).split("\0").filter(Boolean).sort();
    expect(tree).toEqual([...names, "README.md"].sort());
    for (const name of names) expect(await gitIn(dir, "cat-file", "-p", `${sha}:${name}`)).toBe(name);
    expect(await child.readFile(":!README.md")).toBe(":!README.md");
  });
});
