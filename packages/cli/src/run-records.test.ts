import { mkdtemp, readdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { emptyUsage, TaskSnapshot } from "@keen/agent-core";
import { findRun, listRuns, pruneRuns } from "./run-records.js";

/** A snapshot as the lifecycle writes it: a root agent, finished or still in SUMMON. */
function snapshot(runId: string, finished: boolean): TaskSnapshot {
  return TaskSnapshot.parse({
    version: 1,
    runId,
    vision: `vision of ${runId}`,
    nextSeq: 3,
    limits: { maxDepth: 2, maxChildren: 4, maxAgents: 10, maxTurnsPerPhase: 30 },
    maxConcurrency: 2,
    onConflict: "resolve",
    tokensSpent: 0,
    agents: [
      {
        id: "root",
        parentId: null,
        depth: 0,
        branch: "main",
        title: "t",
        instructions: "i",
        phase: finished ? "DONE" : "SUMMON",
        messages: [],
        children: [],
        merges: {},
        ...(finished ? { status: "success" } : {}),
        usage: { ...emptyUsage(), outputTokens: 7 },
      },
    ],
  });
}

describe("run records", () => {
  it("prunes only finished runs' own files, whatever a snapshot claims its id is", async () => {
    const dir = await mkdtemp(join(tmpdir(), "keen-runs-"));
    const put = (name: string, value: unknown) => writeFile(join(dir, name), typeof value === "string" ? value : JSON.stringify(value));
    await put("run_done.json", snapshot("run_done", true));
    await put("run_done.events.ndjson", "");
    // A finished snapshot whose id is empty: naming files after it would match every dotfile.
    await put("odd.json", snapshot("", true));
    await put("run_open.json", snapshot("run_open", false));
    await put("run_open.info.json", { runId: "run_open", vision: "v", repo: "/r", startedAt: new Date(0).toISOString(), pid: 2 ** 22 + 1, model: "m", snapshot: join(dir, "run_open.json") });
    await put(".keep", "x");
    await put("run_done.notes", "mine");
    await put("broken.json", "{");
    // Half-written files of processes killed between writing and renaming (pid 2^22+1 is never alive).
    await put(`run_done.json.${2 ** 22 + 1}.tmp`, "{");
    await put(`run_done.info.json.${2 ** 22 + 1}.tmp`, "{");
    await put(`run_open.json.${2 ** 22 + 1}.tmp`, "{");
    // One of a live process (this one) is still being written.
    await put(`run_done.json.${process.pid}.tmp`, "{");

    const runs = await listRuns(dir);
    expect(runs.map((r) => [r.runId, r.status, r.finished]).sort()).toEqual([
      ["", "success", true],
      ["run_done", "success", true],
      ["run_open", "interrupted", false],
    ]);
    expect((await findRun(dir, { last: true })).runId).toBe("run_open");
    await expect(findRun(dir, { id: "run_" })).rejects.toThrow(/matches 2 runs/);
    expect((await findRun(dir, { id: "done" })).runId).toBe("run_done");

    const removed = await pruneRuns(dir);
    expect(removed.map((r) => r.runId).sort()).toEqual(["", "run_done"]);
    expect((await readdir(dir)).sort()).toEqual(
      [".keep", "broken.json", `run_done.json.${process.pid}.tmp`, "run_done.notes", "run_open.info.json", "run_open.json", `run_open.json.${2 ** 22 + 1}.tmp`].sort(),
    );
  });
});
