import { execFileSync } from "node:child_process";
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { KeenError } from "../errors.js";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";

/**
 * Attacks on LocalWorkspace's path check (`locate`): an agent (or a command it ran) lays out
 * links and folders in its worktree so that keen's own host-side writeFile / exists / readFile
 * lands outside the workspace or inside a `.git`. Every refusal must be a KeenError, and nothing
 * outside may change.
 */

const cleanups: string[] = [];
afterEach(async () => {
  // rm -rf copes with trees deeper than PATH_MAX.
  for (const dir of cleanups.splice(0)) execFileSync("rm", ["-rf", dir]);
});

async function setup(files: Record<string, string> = { "README.md": "# app\n" }) {
  const dir = await createTestRepo(files);
  const outside = await mkdtemp(join(tmpdir(), "keen-outside-"));
  cleanups.push(dir, outside);
  const ws = await LocalWorkspace.open(dir, { sandbox: false });
  return { dir, outside, ws };
}

/** "ok:<value>", a KeenError's code, or "RAW <code>: message" for anything else. */
const outcome = (promise: Promise<unknown>) =>
  promise.then(
    (value) => `ok:${String(value)}`,
    (error: unknown) => (error instanceof KeenError ? error.code : `RAW ${(error as NodeJS.ErrnoException)?.code}: ${String(error).slice(0, 100)}`),
  );
const raw = (outcomes: string[]) => [...new Set(outcomes.filter((o) => o.startsWith("RAW")))];

/** Every entry below `dir` (relative), recursively. */
async function tree(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).map(String).sort();
}

/**
 * A detour longer than PATH_MAX: `A1 -> d0/…/d11` and, in there, `A2 -> e0/…/e11` (names of 200
 * characters, made one `cd` at a time). The kernel follows `A1/A2` fine (it has no limit on a
 * resolved path), but realpath(3) fails with ENAMETOOLONG on it. `inDeep` runs a shell command in
 * the deepest folder.
 */
function longDetour(root: string) {
  const names = (prefix: string) => Array.from({ length: 12 }, (_, i) => `${prefix}${i}`.padEnd(200, "x"));
  const [first, second] = [names("d"), names("e")];
  const sh = (script: string, ...args: string[]) => execFileSync("bash", ["-c", script, "bash", ...args]);
  sh('cd "$1" && shift && for n in "$@"; do mkdir "$n" && cd "$n"; done', root, ...first, ...second);
  sh('cd "$1" && ln -s "$2" A1 && cd "$2" && ln -s "$3" A2', root, first.join("/"), second.join("/"));
  return {
    inDeep: (script: string, ...args: string[]) => sh(`cd "$1" && cd "$2" && cd "$3" && shift 3 && ${script}`, root, first.join("/"), second.join("/"), ...args),
  };
}

describe("locate under attack", () => {
  it("a link whose realpath fails (ENAMETOOLONG on a detour longer than PATH_MAX) and leads on through a second link to a folder outside: writeFile is refused and nothing is created outside", async () => {
    const { dir, outside, ws } = await setup();
    // A1/A2/Q -> the outside folder; L -> A1/A2/Q, which the check resolves by text only to <root>/A1/A2/Q.
    longDetour(dir).inDeep('ln -s "$1" Q', outside);
    await symlink("A1/A2/Q", join(dir, "L"));
    const before = await tree(outside);
    const result = await outcome(ws.writeFile("L/planted.txt", "owned\n"));
    const exists = await outcome(ws.exists("L"));
    expect({ result, created: (await tree(outside)).filter((name) => !before.includes(name)) }).toEqual({ result: "path_outside_workspace", created: [] });
    expect(exists).toBe("path_outside_workspace");
  });

  it("the same detour into the main checkout's .git/info: no new file appears there (e.g. info/attributes)", async () => {
    const { dir, ws } = await setup();
    longDetour(dir).inDeep('ln -s "$1" Q', join(dir, ".git", "info"));
    await symlink("A1/A2/Q", join(dir, "L"));
    const before = await tree(join(dir, ".git", "info"));
    const result = await outcome(ws.writeFile("L/attributes", "* filter=evil\n"));
    expect({ result, gitInfo: await tree(join(dir, ".git", "info")) }).toEqual({ result: "path_outside_workspace", gitInfo: before });
  });

  it("a file inside the workspace reached through links whose realpath is longer than PATH_MAX: exists/readFile/writeFile answer or refuse with a KeenError, never a raw error", async () => {
    const { dir, ws } = await setup();
    longDetour(dir).inDeep("echo deep > y");
    const outcomes = [await outcome(ws.exists("A1/A2/y")), await outcome(ws.readFile("A1/A2/y")), await outcome(ws.writeFile("A1/A2/y", "new\n"))];
    expect(raw(outcomes)).toEqual([]);
  });

  it("concurrent writeFile calls into one new folder tree and onto one file: all succeed, every file whole, no temporary file left", async () => {
    const { dir, ws } = await setup();
    const names = Array.from({ length: 60 }, (_, i) => `new/${i % 3}/deeper/f${i}.txt`);
    const same = Array.from({ length: 40 }, (_, i) => `${String(i).repeat(1000)}\n`);
    const outcomes = await Promise.all([...names.map((name) => outcome(ws.writeFile(name, `${name}\n`))), ...same.map((text) => outcome(ws.writeFile("new/same.txt", text)))]);
    expect(outcomes.filter((o) => o !== "ok:undefined")).toEqual([]);
    for (const name of names) expect(await readFile(join(dir, name), "utf8")).toBe(`${name}\n`);
    expect(same).toContain(await readFile(join(dir, "new/same.txt"), "utf8"));
    expect((await tree(join(dir, "new"))).filter((name) => name.includes(".keen-"))).toEqual([]);
  });

  it("link loops, dangling chains and '..' hidden behind a link: writes through them are refused with a KeenError or replace only the link; nothing appears outside", async () => {
    const { dir, outside, ws } = await setup();
    await mkdir(join(dir, "sub"));
    await symlink("loop", join(dir, "loop"));
    await symlink("ping", join(dir, "pong"));
    await symlink("pong", join(dir, "ping"));
    await symlink("hop2", join(dir, "hop1")); // hop1 -> hop2 -> outside/newdir (missing)
    await symlink(join(outside, "newdir"), join(dir, "hop2"));
    await symlink(outside, join(dir, "sub", "out")); // sub/out -> outside (existing)
    await symlink("sub/out/../missing-dir", join(dir, "dotdot")); // lexically inside, really outside
    await symlink("..", join(dir, "up"));
    const results: Record<string, string> = {};
    for (const path of ["loop/x", "ping/x", "hop1/x", "hop1/deeper/x", "dotdot/x", "dotdot/deeper/x", "up/x", "up", "loop"]) {
      results[`write ${path}`] = await outcome(ws.writeFile(path, "x"));
    }
    for (const path of ["loop", "ping/x", "hop1", "dotdot", "up", "up/x"]) results[`exists ${path}`] = await outcome(ws.exists(path));
    expect(await tree(outside)).toEqual([]);
    expect(raw(Object.values(results))).toEqual([]);
    expect(results["write up/x"]).toBe("path_outside_workspace");
    expect(results["exists up"]).toBe("path_outside_workspace");
    // A link that loops leads nowhere keen can tell: refused like any other, and left as it is.
    expect(results["write loop"]).toBe("path_outside_workspace");
    expect((await lstat(join(dir, "loop"))).isSymbolicLink()).toBe(true);
  });

  it("a folder replaced by a link to outside (or to .git) between two calls: the second call is judged afresh", async () => {
    const { dir, outside, ws } = await setup();
    await ws.writeFile("dir/a.txt", "a\n");
    expect(await ws.exists("dir/a.txt")).toBe(true);
    await rm(join(dir, "dir"), { recursive: true });
    await symlink(outside, join(dir, "dir"));
    await writeFile(join(outside, "a.txt"), "outside\n");
    const afterOutside = [await outcome(ws.writeFile("dir/a.txt", "x")), await outcome(ws.writeFile("dir/b.txt", "x")), await outcome(ws.exists("dir/a.txt"))];
    await rm(join(dir, "dir"));
    await symlink(".git", join(dir, "dir"));
    const afterGit = [await outcome(ws.writeFile("dir/description", "x")), await outcome(ws.writeFile("dir/new", "x")), await outcome(ws.exists("dir/HEAD"))];
    expect({ afterOutside, afterGit }).toEqual({ afterOutside: Array(3).fill("path_outside_workspace"), afterGit: Array(3).fill("path_outside_workspace") });
    expect(await tree(outside)).toEqual(["a.txt"]);
    expect(await readFile(join(outside, "a.txt"), "utf8")).toBe("outside\n");
  });

  it("trailing slashes, a dangling link out and a file where a folder is expected: coded errors, nothing created outside", async () => {
    const { dir, outside, ws } = await setup();
    await symlink(join(outside, "new-target"), join(dir, "dangling-out"));
    await symlink(outside, join(dir, "to-outside"));
    const results = {
      "writeFile new/": await outcome(ws.writeFile("new/", "x")),
      "writeFile dangling-out": await outcome(ws.writeFile("dangling-out", "x")),
      "writeFile dangling-out/": await outcome(ws.writeFile("dangling-out/", "x")),
      "writeFile dangling-out/x": await outcome(ws.writeFile("dangling-out/x", "x")),
      "exists to-outside/": await outcome(ws.exists("to-outside/")),
      "writeFile README.md/x/y": await outcome(ws.writeFile("README.md/x/y", "x")),
      "exists README.md/": await outcome(ws.exists("README.md/")),
    };
    expect(raw(Object.values(results))).toEqual([]);
    expect(results["writeFile dangling-out"]).toBe("path_outside_workspace");
    expect(results["writeFile dangling-out/x"]).toBe("path_outside_workspace");
    expect(results["exists to-outside/"]).toBe("path_outside_workspace");
    expect(results["writeFile README.md/x/y"]).toBe("not_a_directory");
    expect(await tree(outside)).toEqual([]);
    expect(await readFile(join(dir, "README.md"), "utf8")).toBe("# app\n");
  });
});
