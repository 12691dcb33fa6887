import { readFile } from "node:fs/promises";
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
