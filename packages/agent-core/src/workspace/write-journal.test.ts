import { chmod, lstat, mkdir, readFile, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { LocalWorkspace } from "./local-workspace.js";
import { createTestRepo } from "./test-repo.js";
import { readFileStates, writeFileStates } from "./write-journal.js";

describe("write journal", () => {
  it("reads files as they are (bytes, permission bits, absence) and writes them back exactly", async () => {
    const dir = await createTestRepo({ "README.md": "# test\n" });
    const workspace = await LocalWorkspace.open(dir, { sandbox: false });
    const binary = Buffer.from([0xff, 0x00, 0xfe, 0x0a]);
    await mkdir(join(dir, "bin"));
    await writeFile(join(dir, "bin/run.sh"), "#!/bin/sh\n");
    await chmod(join(dir, "bin/run.sh"), 0o750);
    await writeFile(join(dir, "blob.dat"), binary);
    const states = await readFileStates(workspace, ["bin/run.sh", "./blob.dat", "gone.txt", "missing/dir/x.txt"]);
    expect(states).toEqual([
      { path: "bin/run.sh", mode: 0o750, text: "#!/bin/sh\n" },
      { path: "blob.dat", mode: expect.any(Number), base64: binary.toString("base64") },
      { path: "gone.txt" },
      { path: "missing/dir/x.txt" },
    ]);

    await writeFile(join(dir, "bin/run.sh"), "changed\n");
    await chmod(join(dir, "bin/run.sh"), 0o644);
    await writeFile(join(dir, "blob.dat"), "text now");
    await writeFile(join(dir, "gone.txt"), "here\n");
    await writeFileStates(workspace, states!);
    expect(await readFile(join(dir, "bin/run.sh"), "utf8")).toBe("#!/bin/sh\n");
    expect((await lstat(join(dir, "bin/run.sh"))).mode & 0o7777).toBe(0o750);
    expect(await readFile(join(dir, "blob.dat"))).toEqual(binary);
    await expect(lstat(join(dir, "gone.txt"))).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("cannot journal a file reached through a symbolic link or one that is not a regular file", async () => {
    const dir = await createTestRepo({ "real/a.txt": "a\n" });
    const workspace = await LocalWorkspace.open(dir, { sandbox: false });
    await symlink("real", join(dir, "link"));
    expect(await readFileStates(workspace, ["link/a.txt"])).toBeNull();
    expect(await readFileStates(workspace, ["link"])).toBeNull();
    expect(await readFileStates(workspace, ["real"])).toBeNull();
    expect(await readFileStates(workspace, ["../outside.txt"])).toBeNull();
    expect(await readFileStates(workspace, ["real/a.txt"])).toEqual([{ path: "real/a.txt", mode: expect.any(Number), text: "a\n" }]);
  });
});
