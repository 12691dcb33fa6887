import { execFileSync } from "node:child_process";
import { mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo, TEST_GIT_IDENTITY } from "../workspace/test-repo.js";
import { analyzeProject } from "./project-analysis.js";

describe("analyzeProject", () => {
  it("never fails over a README that is a committed symlink leaving the repository, or a broken package.json", async () => {
    const outside = await mkdtemp(join(tmpdir(), "keen-outside-"));
    await writeFile(join(outside, "secret.md"), "outside secret\n");
    const dir = await createTestRepo({ "package.json": "{ not json", "src/a.ts": "x\n" });
    await symlink(join(outside, "secret.md"), join(dir, "README.md"));
    await execa("git", ["add", "-A"], { cwd: dir });
    await execa("git", ["commit", "-qm", "link"], { cwd: dir, env: TEST_GIT_IDENTITY });
    const analysis = await analyzeProject(await LocalWorkspace.open(dir, { sandbox: false }));
    expect(analysis.readme).toBeNull();
    expect(analysis.files).toContain("README.md");
    expect(analysis.languages).toEqual(["TypeScript"]);
    expect(JSON.stringify(analysis)).not.toContain("outside secret");
  });

  it("skips a README that is a FIFO instead of blocking", async () => {
    // A tracked README replaced by a FIFO in the working tree: git still lists it.
    const dir = await createTestRepo({ "a.py": "x\n", README: "hello\n" });
    await rm(join(dir, "README"));
    execFileSync("mkfifo", [join(dir, "README")]);
    const analysis = await analyzeProject(await LocalWorkspace.open(dir, { sandbox: false }));
    expect(analysis.files).toContain("README");
    expect(analysis.readme).toBeNull();
    expect(analysis.languages).toEqual(["Python"]);
  });
});
