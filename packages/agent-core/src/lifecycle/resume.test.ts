import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa, type ResultPromise } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import { readFile } from "node:fs/promises";
import { reply, requestPosition, startMessagesServer, type MessagesServer } from "../testing/index.js";
import { createTestRepo } from "../workspace/test-repo.js";
import { done, explore, plan, scenarioPolicy, write, type Scenario } from "./testing/scenario.js";

const entry = fileURLToPath(new URL("./testing/task-process.ts", import.meta.url));
const repoRoot = fileURLToPath(new URL("../../../..", import.meta.url));

const scenario: Scenario = {
  root: { finish_explore: [explore("PLAN")], submit_plan: [plan([{ title: "Alpha" }, { title: "Beta" }])], complete_task: [write("SUMMARY.md", "alpha and beta\n"), done()] },
  A: { complete_task: [write("alpha.txt", "a1\n"), write("alpha2.txt", "a2\n"), done("Alpha done.")] },
  B: { complete_task: [write("beta.txt", "b1\n"), write("beta2.txt", "b2\n"), done("Beta done.")] },
};

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

function taskProcess(config: Record<string, unknown>): ResultPromise {
  return execa(process.execPath, ["--import", "tsx", entry, JSON.stringify(config)], { cwd: repoRoot, reject: false, timeout: 60_000 });
}

async function branchTrees(dir: string): Promise<Record<string, string>> {
  const branches = (await execa("git", ["branch", "--format=%(refname:short)"], { cwd: dir })).stdout.split("\n");
  const trees: Record<string, string> = {};
  for (const branch of branches) trees[branch] = (await execa("git", ["rev-parse", `${branch}^{tree}`], { cwd: dir })).stdout;
  return trees;
}

describe("resume after SIGKILL", () => {
  it("continues a killed run to the same branches, without re-running finished agents", async () => {
    // The reference: one uninterrupted run.
    server = await startMessagesServer({ policy: scenarioPolicy(scenario) });
    const referenceRepo = await createTestRepo();
    const snapshots = await mkdtemp(join(tmpdir(), "keen-snap-"));
    const runId = "run_5e5e5e5e-0000-4000-8000-000000000000";
    const reference = await taskProcess({ mode: "start", repo: referenceRepo, baseURL: server.url, snapshotPath: join(snapshots, "ref.json"), vision: "Build it", runId });
    expect(reference.exitCode, String(reference.stderr)).toBe(0);
    await server.close();

    // The same run, killed while B waits for its second turn.
    const calls: string[] = [];
    let child: ResultPromise | undefined;
    let killed = false;
    server = await startMessagesServer({
      policy: scenarioPolicy(scenario, {
        onRequest: async (agent, phase, turn) => {
          calls.push(`${killed ? "after" : "before"}:${agent}:${phase}:${turn}`);
          if (!killed && agent === "B" && phase === "complete_task" && turn === 1) {
            killed = true;
            child!.kill("SIGKILL");
            await new Promise((resolve) => setTimeout(resolve, 200));
          }
        },
      }),
    });
    const repo = await createTestRepo();
    const snapshotPath = join(snapshots, "run.json");
    child = taskProcess({ mode: "start", repo, baseURL: server.url, snapshotPath, vision: "Build it", runId });
    const first = await child;
    expect(first.signal).toBe("SIGKILL");

    const resumed = await taskProcess({ mode: "resume", repo, baseURL: server.url, snapshotPath, vision: "Build it" });
    expect(resumed.exitCode, String(resumed.stderr)).toBe(0);
    const after = calls.filter((c) => c.startsWith("after:"));
    // A had finished: it never asks again. B repeats only its interrupted turn, then goes on.
    expect(after.some((c) => c.includes(":A:"))).toBe(false);
    expect(after.filter((c) => c.includes(":B:"))).toEqual(["after:B:complete_task:1", "after:B:complete_task:2"]);
    // Event numbering continues where the killed process stopped.
    const { firstSeq } = JSON.parse(String(resumed.stdout)) as { firstSeq: number };
    expect(firstSeq).toBeGreaterThan(0);

    // The run branch and its children's, with the same trees; main is untouched in both.
    const trees = await branchTrees(repo);
    expect(Object.keys(trees)).toEqual(["keen/5e5e5e5e", "keen/5e5e5e5e-agents/summon-A", "keen/5e5e5e5e-agents/summon-B", "main"]);
    expect(trees).toEqual(await branchTrees(referenceRepo));
    expect(trees.main).toBe((await execa("git", ["rev-parse", "HEAD^{tree}"], { cwd: repo })).stdout);
    expect((await execa("git", ["status", "--porcelain"], { cwd: repo })).stdout).toBe("");
    const worktrees = (await execa("git", ["worktree", "list"], { cwd: repo })).stdout.split("\n");
    expect(worktrees).toHaveLength(1);
  }, 120_000); // three task processes; on a busy machine each start costs seconds

  it("never numbers an event twice: SIGKILL after a snapshot and a later event, then resume", async () => {
    let child: ResultPromise | undefined;
    const snapshotPath = join(await mkdtemp(join(tmpdir(), "keen-snap-")), "run.json");
    let phase: "fault" | "kill" | "done" = "fault";
    const policy = scenarioPolicy(scenario);
    server = await startMessagesServer({
      policy: async (request, context) => {
        const { agent, phase: step, turn } = requestPosition(request);
        if (agent === "B" && step === "COMPLETE" && turn === 1) {
          // First an overload: keen emits model.retry (an event after the last snapshot) and asks again.
          if (phase === "fault") {
            phase = "kill";
            // The root merges A while B works; once that merge (and its snapshot) is written, the
            // retry below is the last event and no snapshot follows it.
            for (let waited = 0; waited < 30_000 && !(await readFile(`${snapshotPath}.events.ndjson`, "utf8").catch(() => "")).includes('"git.merge"'); waited += 20) {
              await new Promise((resolve) => setTimeout(resolve, 20));
            }
            return reply.error(529);
          }
          if (phase === "kill") {
            phase = "done";
            child!.kill("SIGKILL");
            await new Promise((resolve) => setTimeout(resolve, 200));
          }
        }
        return policy(request, context);
      },
    });
    const repo = await createTestRepo();
    child = taskProcess({ mode: "start", repo, baseURL: server.url, snapshotPath, vision: "Build it" });
    expect((await child).signal).toBe("SIGKILL");

    const seqsOf = async () => (await readFile(`${snapshotPath}.events.ndjson`, "utf8")).trim().split("\n").map((line) => JSON.parse(line) as { seq: number; type: string });
    const beforeResume = await seqsOf();
    const snapshotSeq = (JSON.parse(await readFile(snapshotPath, "utf8")) as { nextSeq: number }).nextSeq;
    const lastEmitted = beforeResume.at(-1)!.seq;
    // The situation under test: events were emitted after the last snapshot.
    expect(lastEmitted).toBeGreaterThanOrEqual(snapshotSeq);
    expect(beforeResume.at(-1)!.type).toBe("model.retry");

    const resumed = await taskProcess({ mode: "resume", repo, baseURL: server.url, snapshotPath, vision: "Build it" });
    expect(resumed.exitCode, String(resumed.stderr)).toBe(0);
    const { firstSeq } = JSON.parse(String(resumed.stdout)) as { firstSeq: number };
    expect(firstSeq).toBe(lastEmitted + 1);
    const all = (await seqsOf()).map((e) => e.seq);
    expect(all).toEqual(all.map((_, i) => i));
  }, 120_000);
});
