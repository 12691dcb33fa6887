import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readSnapshotFile, SnapshotFile } from "./snapshot-file.js";
import { namedSnapshot } from "./testing/named-snapshot.js";

const snapshot = (vision: string) => namedSnapshot(vision);

async function folder() {
  const dir = await mkdtemp(join(tmpdir(), "keen-snapshot-file-"));
  return { dir, path: join(dir, "runs", "run.json") };
}
const temporaries = async (dir: string) => (await readdir(join(dir, "runs"))).filter((name) => name.endsWith(".tmp"));

describe("SnapshotFile", () => {
  it("keeps the newest snapshot whole in the file, writing in the order asked even when not awaited, and leaves no temporary file once closed", async () => {
    const { dir, path } = await folder();
    const file = new SnapshotFile(path);
    const writes = ["first", "second", "third"].map((vision) => file.write(snapshot(vision)));
    await Promise.all(writes);
    expect((await readSnapshotFile(path)).vision).toBe("third");
    expect(file.writes).toBe(3);
    // The next write's file, made ahead, is there until the end.
    expect(await temporaries(dir)).toEqual([`run.json.${process.pid}.tmp`]);
    await file.write(snapshot("fourth"));
    expect((await readSnapshotFile(path)).vision).toBe("fourth");
    await file.close();
    expect(await temporaries(dir)).toEqual([]);
    await file.write(snapshot("after close"));
    expect((await readSnapshotFile(path)).vision).toBe("fourth");
    expect((await readFile(path, "utf8")).endsWith("}\n")).toBe(true);
    expect(file.error).toBeUndefined();
    await rm(dir, { recursive: true, force: true });
  });

  it("stays at the last state written once frozen, and removes the file made ahead", async () => {
    const { dir, path } = await folder();
    const file = new SnapshotFile(path);
    await file.write(snapshot("resumable"));
    file.freeze();
    await file.write(snapshot("aborted"));
    expect((await readSnapshotFile(path)).vision).toBe("resumable");
    await file.close();
    expect(await temporaries(dir)).toEqual([]);
    await rm(dir, { recursive: true, force: true });
  });

  it("still writes when the file made ahead was removed meanwhile", async () => {
    const { dir, path } = await folder();
    const file = new SnapshotFile(path);
    await file.write(snapshot("one"));
    for (const name of await temporaries(dir)) await rm(join(dir, "runs", name));
    await file.write(snapshot("two"));
    expect((await readSnapshotFile(path)).vision).toBe("two");
    expect(file.error).toBeUndefined();
    await file.close();
    expect(await temporaries(dir)).toEqual([]);
    await rm(dir, { recursive: true, force: true });
  });

  it("reports the first failure and goes on", async () => {
    const { dir } = await folder();
    // A folder where the file should be: the rename fails.
    const file = new SnapshotFile(dir);
    await file.write(snapshot("x"));
    expect(file.error).toBeInstanceOf(Error);
    await file.close();
    await rm(dir, { recursive: true, force: true });
  });
});
