import { readFile } from "node:fs/promises";
import type { ResultPromise } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import { TaskSnapshot } from "@keen/agent-core";
import { reply, startMessagesServer, type MessagesServer } from "@keen/agent-core/testing";
import { scriptedTreePolicy, type ScriptedTask } from "./demo/scripted-tree.js";
import { branches, git, gitRepo, keen, parseNdjson, snapshotFiles } from "./testing/keen-process.js";

const write = (path: string, content: string) => reply.toolUse("write_file", { path, content });

const tree: ScriptedTask = {
  title: "Alpha and beta",
  instructions: "Alpha and beta",
  subtasks: [
    { title: "Alpha", instructions: "Write the alpha files.", work: [write("alpha.txt", "a1\n"), write("alpha2.txt", "a2\n")], summary: "Alpha done." },
    { title: "Beta", instructions: "Write the beta files.", work: [write("beta.txt", "b1\n"), write("beta2.txt", "b2\n")], summary: "Beta done." },
  ],
  work: [write("SUMMARY.md", "alpha and beta\n")],
  summary: "Both merged.",
};

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

/**
 * Starts `keen run` and interrupts it with `signal` when beta asks for its second turn of
 * COMPLETE (alpha is finished by then: one child at a time). The reply is held back so the
 * signal lands while a request is in flight. Later requests are recorded as `after:…`.
 */
async function interruptedRun(signal: "SIGKILL" | "SIGINT") {
  const calls: string[] = [];
  let child: ResultPromise | undefined;
  let interrupted = false;
  server = await startMessagesServer({
    policy: scriptedTreePolicy(tree, {
      onRequest: async ({ agent, phase, turn }) => {
        calls.push(`${interrupted ? "after" : "before"}:${agent}:${phase}:${turn}`);
        if (!interrupted && agent === "B" && phase === "complete_task" && turn === 1) {
          interrupted = true;
          child!.kill(signal);
          await new Promise((resolve) => setTimeout(resolve, 500));
        }
      },
    }),
  });
  const dir = await gitRepo();
  const env = { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url };
  child = keen(["run", "Alpha and beta", "--repo", dir, "--json", "--no-sandbox", "--concurrency", "1"], env);
  const first = await child;
  return { dir, env, calls, first };
}

async function expectFinished(dir: string) {
  expect(await branches(dir)).toEqual(["main", "summon-A", "summon-B"]);
  expect(await git(dir, "ls-tree", "-r", "--name-only", "main")).toBe("README.md\nSUMMARY.md\nalpha.txt\nalpha2.txt\nbeta.txt\nbeta2.txt");
  expect(await git(dir, "show", "main:beta2.txt")).toBe("b2");
  expect(await git(dir, "status", "--porcelain")).toBe("");
  expect((await git(dir, "worktree", "list")).split("\n")).toHaveLength(1);
}

describe("keen run --resume", { timeout: 120_000 }, () => {
  it("finishes a run whose process was killed with SIGKILL mid-tree, without re-running finished agents", async () => {
    const { dir, env, calls, first } = await interruptedRun("SIGKILL");
    expect(first.signal).toBe("SIGKILL");
    const killedEvents = parseNdjson(String(first.stdout));
    expect(killedEvents.some((e) => e.type === "run.completed")).toBe(false);

    const [snapshotPath] = await snapshotFiles(dir);
    const saved = TaskSnapshot.parse(JSON.parse(await readFile(snapshotPath!, "utf8")));
    expect(saved.agents.find((a) => a.id === "A")).toMatchObject({ phase: "DONE", status: "success" });
    expect(saved.agents.find((a) => a.id === "B")!.phase).toBe("COMPLETE");

    // No --repo: the snapshot's default location names its repository.
    const resumed = await keen(["run", "--resume", snapshotPath!, "--json", "--no-sandbox"], env);
    expect(resumed.exitCode, resumed.stderr).toBe(0);
    const events = parseNdjson(resumed.stdout);
    // Numbering continues after the killed process's last saved event.
    expect(events[0]!.seq).toBe(saved.nextSeq);
    expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => saved.nextSeq + i));
    expect(events.at(-1)).toMatchObject({ type: "run.completed", status: "success", summary: "Both merged." });
    expect(events.filter((e) => e.type === "agent.spawned")).toEqual([]);
    // A finished child is merged while its siblings still run, so A's merge may have happened
    // before the kill; across both processes each child ends merged, A before B, and B after the resume.
    const merges = [...killedEvents, ...events].flatMap((e) => (e.type === "git.merge" ? [[e.branch, e.result]] : []));
    expect(merges.filter(([branch]) => branch === "summon-A").at(-1)).toEqual(["summon-A", "merged"]);
    expect(merges.at(-1)).toEqual(["summon-B", "merged"]);
    expect(merges.findIndex(([branch]) => branch === "summon-A")).toBeLessThan(merges.findIndex(([branch]) => branch === "summon-B"));
    expect(events.some((e) => e.type === "git.merge" && e.branch === "summon-B")).toBe(true);
    // Alpha had finished and never asks again; beta repeats only its interrupted turn.
    const after = calls.filter((c) => c.startsWith("after:"));
    expect(after.some((c) => c.includes(":A:"))).toBe(false);
    expect(after.filter((c) => c.includes(":B:"))).toEqual(["after:B:complete_task:1", "after:B:complete_task:2"]);
    await expectFinished(dir);
  });

  it("stops cleanly on Ctrl-C (SIGINT): exit 130, a resumable snapshot and the command to resume", async () => {
    const { dir, env, first } = await interruptedRun("SIGINT");
    expect(first.exitCode).toBe(130);
    const [snapshotPath] = await snapshotFiles(dir);
    expect(first.stderr).toContain(`keen: interrupted; agents stopped, snapshot saved at ${snapshotPath}; resume with: keen run --resume ${snapshotPath}`);
    // Stdout stays NDJSON to the end, which records the abort.
    const events = parseNdjson(String(first.stdout));
    expect(events.at(-1)).toMatchObject({ type: "run.completed", status: "aborted" });
    expect(events.filter((e) => e.type === "agent.completed").map((e) => e.type === "agent.completed" && [e.agentId, e.status])).toEqual([
      ["A", "success"],
      ["B", "aborted"],
      ["root", "aborted"],
    ]);
    // The snapshot is the last state before the interrupt, not the aborted one: it can go on.
    const saved = TaskSnapshot.parse(JSON.parse(await readFile(snapshotPath!, "utf8")));
    expect(saved.agents.find((a) => a.id === "root")!.phase).toBe("SUMMON");
    expect((await git(dir, "worktree", "list")).split("\n").length).toBeGreaterThanOrEqual(1);

    const resumed = await keen(["run", "--resume", snapshotPath!, "--no-sandbox", "--repo", dir], { ...env, KEEN_FORCE_TTY: "0" });
    expect(resumed.exitCode, resumed.stderr).toBe(0);
    expect(resumed.stdout).toContain(`resuming ${saved.runId} from ${snapshotPath}`);
    expect(resumed.stdout).toContain("merge summon-B into main: merged");
    await expectFinished(dir);
  });

  it("refuses to resume on another branch than the run's", async () => {
    const { dir, env } = await interruptedRun("SIGKILL");
    const [snapshotPath] = await snapshotFiles(dir);
    await git(dir, "checkout", "-q", "-b", "elsewhere");
    const result = await keen(["run", "--resume", snapshotPath!, "--no-sandbox"], env);
    expect(result.exitCode).toBe(2);
    expect(result.stderr.trim()).toMatch(/^keen: \S+ is on branch elsewhere but run_\S+ works on main; check it out \(or pass --repo\) first$/);
  });
});
