import { execFileSync } from "node:child_process";
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { readSnapshotFile, SnapshotFile } from "./snapshot-file.js";
import { namedSnapshot } from "./testing/named-snapshot.js";

/**
 * Attacks on SnapshotFile's invariants: the file always holds a whole snapshot (the newest one
 * written), nothing changes it after freeze, no temporary file of this process is left after
 * close, a failing write sets `error` and never throws, writes complete in the order asked, and
 * nothing outside the snapshot's own file is written.
 */

const snapshot = (vision: string) => namedSnapshot(vision, "run_attack");

const repoRoot = resolve(fileURLToPath(new URL(".", import.meta.url)), "../../..");
const cleanups: string[] = [];
afterEach(async () => {
  for (const dir of cleanups.splice(0)) {
    try {
      execFileSync("chattr", ["-R", "-i", dir], { stdio: "ignore" });
    } catch {
      // Not root or no chattr.
    }
    await rm(dir, { recursive: true, force: true });
  }
});

async function folder() {
  const dir = await mkdtemp(join(tmpdir(), "keen-snapshot-attack-"));
  cleanups.push(dir);
  await mkdir(join(dir, "runs"));
  return { dir, runs: join(dir, "runs"), path: join(dir, "runs", "run.json") };
}
const temporaries = async (runs: string) => (await readdir(runs)).filter((name) => name.endsWith(".tmp"));
/** The vision in the file, or why it is not a snapshot. */
const visionIn = (path: string) => readSnapshotFile(path).then((s) => s.vision, (error: Error) => `NOT A SNAPSHOT: ${error.message.slice(0, 120)}`);

/** Makes a folder read-only even for root (immutable attribute), or undoes it. */
function setReadOnly(dir: string, on: boolean): void {
  if (process.getuid?.() === 0) execFileSync("chattr", [on ? "+i" : "-i", dir]);
  else execFileSync("chmod", [on ? "a-w" : "u+w", dir]);
}

describe("SnapshotFile under attack", () => {
  it("100 writes not awaited while a reader polls: the reader only ever sees whole snapshots, in order; writes resolve in order; the last one stays", async () => {
    const { runs, path } = await folder();
    const file = new SnapshotFile(path);
    const seen: string[] = [];
    let reading = true;
    const reader = (async () => {
      while (reading) {
        const text = await readFile(path, "utf8").catch(() => undefined);
        if (text !== undefined) seen.push(text);
        await new Promise((r) => setImmediate(r));
      }
    })();
    const done: number[] = [];
    await Promise.all(Array.from({ length: 100 }, (_, i) => file.write(snapshot(`v${String(i).padStart(3, "0")}`)).then(() => done.push(i))));
    reading = false;
    await reader;
    await file.close();
    expect(done).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(file.writes).toBe(100);
    expect(file.error).toBeUndefined();
    expect(await visionIn(path)).toBe("v099");
    expect(await temporaries(runs)).toEqual([]);
    expect(seen.length).toBeGreaterThan(0);
    const visions = seen.map((text) => (JSON.parse(text) as { vision: string }).vision);
    expect([...visions].sort()).toEqual(visions);
  });

  it("close() called right after writes that were not awaited (the run's last snapshots): it waits for them, the newest is in the file", async () => {
    const { runs, path } = await folder();
    const file = new SnapshotFile(path);
    const writes = ["turn 1", "turn 2", "final"].map((vision) => file.write(snapshot(vision)));
    await file.close();
    await Promise.all(writes);
    expect({ vision: await visionIn(path), writes: file.writes, error: file.error }).toEqual({ vision: "final", writes: 3, error: undefined });
    expect(await temporaries(runs)).toEqual([]);
  });

  it("a write asked before freeze() is not silently dropped: it lands, or error says why", async () => {
    const { path } = await folder();
    const file = new SnapshotFile(path);
    await file.write(snapshot("turn 1"));
    // A turn ends (onSnapshot) and Ctrl-C comes in the same tick, as runTaskSession's onSignal does.
    const lastResumable = file.write(snapshot("turn 2"));
    file.freeze();
    const aborted = file.write(snapshot("aborted"));
    await Promise.all([lastResumable, aborted]);
    await file.close();
    const vision = await visionIn(path);
    expect(vision === "turn 2" || file.error !== undefined, `file holds "${vision}", error ${String(file.error)}`).toBe(true);
  });

  it("freeze() then close(): once close() resolves, no temporary file of this process is left", async () => {
    const { runs, path } = await folder();
    for (let round = 0; round < 20; round++) {
      const file = new SnapshotFile(path);
      await file.write(snapshot(`r${round}`));
      file.freeze();
      await file.close();
      expect(await temporaries(runs), `round ${round}`).toEqual([]);
    }
  });

  it("the snapshot path is a folder: error is set, no write throws, and close() leaves no temporary file", async () => {
    const { runs } = await folder();
    const target = join(runs, "run.json");
    await mkdir(target);
    await writeFile(join(target, "keep.txt"), "keep");
    const file = new SnapshotFile(target);
    await expect(file.write(snapshot("a"))).resolves.toBeUndefined();
    await expect(file.write(snapshot("b"))).resolves.toBeUndefined();
    expect(file.error).toBeInstanceOf(Error);
    expect(file.writes).toBe(0);
    await expect(file.close()).resolves.toBeUndefined();
    expect(await readFile(join(target, "keep.txt"), "utf8")).toBe("keep");
    expect(await temporaries(runs)).toEqual([]);
  });

  it("the snapshot path is a symlink to a file elsewhere: the link is replaced, the file it pointed to is untouched", async () => {
    const { dir, path } = await folder();
    const victim = join(dir, "victim.txt");
    await writeFile(victim, "precious\n");
    await symlink(victim, path);
    const file = new SnapshotFile(path);
    await file.write(snapshot("one"));
    await file.write(snapshot("two"));
    await file.close();
    expect(await readFile(victim, "utf8")).toBe("precious\n");
    expect((await lstat(path)).isFile()).toBe(true);
    expect(await visionIn(path)).toBe("two");
  });

  it("the folder turns read-only mid-run: writes fail softly, the last whole snapshot stays, and close() (once writable again) leaves no temporary file", async () => {
    const { runs, path } = await folder();
    const file = new SnapshotFile(path);
    await file.write(snapshot("good"));
    setReadOnly(runs, true);
    try {
      await expect(file.write(snapshot("blocked 1"))).resolves.toBeUndefined();
      await expect(file.write(snapshot("blocked 2"))).resolves.toBeUndefined();
      expect(file.error).toBeInstanceOf(Error);
      expect(await visionIn(path)).toBe("good");
    } finally {
      setReadOnly(runs, false);
    }
    await file.close();
    expect(await temporaries(runs)).toEqual([]);
  });

  it("a symlink planted at the temporary name before the first write: the file it points to is not overwritten", async () => {
    const { dir, path } = await folder();
    const victim = join(dir, "victim.txt");
    await writeFile(victim, "precious\n");
    await symlink(victim, `${path}.${process.pid}.tmp`);
    const file = new SnapshotFile(path);
    await file.write(snapshot("one"));
    await file.close();
    expect(await readFile(victim, "utf8")).toBe("precious\n");
  });

  it("the temporary file made ahead is swapped for a symlink: the next write leaves a whole snapshot file (not the link) and the target untouched", async () => {
    const { dir, path } = await folder();
    const victim = join(dir, "victim.txt");
    await writeFile(victim, "precious\n");
    const file = new SnapshotFile(path);
    await file.write(snapshot("one"));
    const temp = `${path}.${process.pid}.tmp`;
    await rm(temp);
    await symlink(victim, temp);
    await file.write(snapshot("two"));
    const afterTwo = await visionIn(path);
    const wasLink = (await lstat(path)).isSymbolicLink();
    await file.close();
    expect(await readFile(victim, "utf8")).toBe("precious\n");
    expect({ afterTwo, wasLink }).toEqual({ afterTwo: "two", wasLink: false });
  });

  it("a huge snapshot (about 64 MB) is written whole while a reader polls; the reader only sees whole snapshots", async () => {
    const { runs, path } = await folder();
    const file = new SnapshotFile(path);
    await file.write(snapshot("small"));
    const big = "x".repeat(64 * 1024 * 1024);
    let reading = true;
    let reads = 0;
    const bad: string[] = [];
    const reader = (async () => {
      while (reading) {
        const text = await readFile(path, "utf8");
        reads += 1;
        try {
          JSON.parse(text);
        } catch {
          bad.push(`length ${text.length}`);
        }
      }
    })();
    await file.write(snapshot(big));
    reading = false;
    await reader;
    await file.close();
    expect(bad).toEqual([]);
    expect(reads).toBeGreaterThan(0);
    expect((await visionIn(path)).length).toBe(big.length);
    expect(await temporaries(runs)).toEqual([]);
  }, 60_000);

  it("a write the file system cuts short (file-size limit, as on a full disk) never replaces the last whole snapshot", async () => {
    const { path } = await folder();
    const file = new SnapshotFile(path);
    await file.write(snapshot("good"));
    await file.close();
    // Another process, its file-size limit (RLIMIT_FSIZE) at 1 MiB: a longer write is cut short
    // there, as ENOSPC does mid-write. The limit is that process's own, not the test runner's.
    const script = `
      import { SnapshotFile } from ${JSON.stringify(fileURLToPath(new URL("./snapshot-file.ts", import.meta.url)))};
      import { namedSnapshot } from ${JSON.stringify(fileURLToPath(new URL("./testing/named-snapshot.ts", import.meta.url)))};
      const file = new SnapshotFile(process.argv[1]);
      await file.write(namedSnapshot("y".repeat(4 * 1024 * 1024), "run_attack"));
      await file.close();
      console.log(JSON.stringify({ writes: file.writes, error: file.error?.message ?? null }));
    `;
    const child = execFileSync("prlimit", ["--fsize=1048576:", "--", process.execPath, "--import", "tsx", "--input-type=module", "-e", script, path], { cwd: repoRoot, encoding: "utf8" });
    const report = JSON.parse(child.trim().split("\n").at(-1)!) as { writes: number; error: string | null };
    expect(report.writes).toBe(0);
    expect(report.error).not.toBeNull();
    expect(await visionIn(path)).toBe("good");
  });
});
