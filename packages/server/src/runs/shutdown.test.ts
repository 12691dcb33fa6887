import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { MessagesServer } from "@keen/agent-core/testing";
import { execa, type ResultPromise } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ADMIN_EMAIL, api, copyServerTemplate, createTestRepo, eventually, readSse, signup } from "../testing/harness.js";
import { scriptedModel } from "../testing/model.js";

const root = fileURLToPath(new URL("../../../../", import.meta.url));

/** `keen serve` on embedded defaults (PGlite under `dataDir`) in its own process. */
function serve(dataDir: string, modelUrl: string): { child: ResultPromise; url: Promise<string> } {
  const child = execa("node", ["--import", "tsx", "packages/server/src/testing/serve-process.ts"], {
    cwd: root,
    reject: false,
    extendEnv: false,
    env: {
      PATH: process.env.PATH!,
      KEEN_DATA_DIR: dataDir,
      ANTHROPIC_BASE_URL: modelUrl,
      ANTHROPIC_API_KEY: "test",
      KEEN_MODEL: "claude-haiku-4-5",
      KEEN_LOCAL_MODE: "true",
      KEEN_ADMIN_EMAILS: ADMIN_EMAIL,
      KEEN_HEARTBEAT_MS: "200",
      KEEN_WORKERS: "1",
      PORT: "0",
      LOG_LEVEL: "silent",
    },
  });
  const url = new Promise<string>((resolve, reject) => {
    let text = "";
    child.stdout!.on("data", (chunk) => {
      text += String(chunk);
      const match = /ready (http:\/\/\S+)/.exec(text);
      if (match) resolve(match[1]!);
    });
    void child.then((r) => reject(new Error(`server exited (${r.exitCode}): ${r.stderr}`)));
  });
  return { child, url };
}

describe("SIGTERM to a server process mid-run (embedded PGlite)", () => {
  let model: MessagesServer;
  let dataDir: string;
  const children: ResultPromise[] = [];

  beforeAll(async () => {
    model = await scriptedModel({ writeDelayMs: 3_000 });
    dataDir = await mkdtemp(join(tmpdir(), "keen-shutdown-"));
    // The run's migrated template (test/setup) spares the first process initdb and the migrations.
    await copyServerTemplate(join(dataDir, "db"));
  });
  afterAll(async () => {
    for (const child of children) child.kill("SIGKILL");
    await model.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it("stops taking work, checkpoints the run, ends its streams, exits 0; the restarted server finishes the run and settles it once", async () => {
    const first = serve(dataDir, model.url);
    children.push(first.child);
    const url = await first.url;
    const owner = await signup(url);
    const admin = await signup(url, ADMIN_EMAIL);
    const granted = 20_000_000;
    expect((await api(url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: owner.teamId, amount: granted, idempotencyKey: `g-${owner.teamId}` } })).status).toBe(201);
    const repo = await createTestRepo();
    const created = await api(url, "/v1/runs", { headers: owner.headers, body: { vision: "Write notes", repo: { path: repo } } });
    expect(created.status).toBe(202);
    const runId = created.body.id as string;

    // A follower connected while the run works; it must see its stream end, not hang.
    const following = readSse(`${url}/v1/runs/${runId}/events`, owner.headers, (frame) => frame.event === "end");
    // Checkpointed: the agent tree is saved with each snapshot; the slow model keeps it running.
    await eventually(async () => {
      const run = await api(url, `/v1/runs/${runId}`, { headers: owner.headers });
      return run.body.status === "running" && run.body.agents.length > 0;
    }, 60_000, "a checkpoint");

    first.child.kill("SIGTERM");
    const exited = await first.child;
    // The process's own deadline exits 1 when the stop takes over 10 s; 0 means it made it.
    expect(exited.exitCode).toBe(0);
    expect(exited.stdout).toContain("stopped");
    const followed = await following;
    expect(followed.status).toBe(200);
    const seen = followed.frames.filter((f) => f.event !== "end").map((f) => Number(f.id));
    expect(seen.length).toBeGreaterThan(0);
    expect(seen).toEqual(seen.map((_, i) => i + 1));
    // The run was not finished by the stopping server.
    expect(followed.frames.some((f) => f.data.includes('"type":"run.completed"'))).toBe(false);

    // The restart on the same data dir picks the handed-back run up and completes it.
    const second = serve(dataDir, model.url);
    children.push(second.child);
    const url2 = await second.url;
    const final = await eventually(async () => {
      const run = await api(url2, `/v1/runs/${runId}`, { headers: owner.headers });
      return ["succeeded", "failed", "cancelled", "interrupted"].includes(run.body.status) ? run.body : undefined;
    }, 120_000, "the handed-back run to finish");
    expect(final.status).toBe("succeeded");
    expect((await api(url2, "/v1/credits", { headers: owner.headers })).body.balance).toBe(granted - final.cost);

    // One event log across both processes: the follower's prefix continues gap-free.
    const replay = await readSse(`${url2}/v1/runs/${runId}/events`, owner.headers, (f) => f.event === "end");
    const ids = replay.frames.filter((f) => f.event !== "end").map((f) => Number(f.id));
    expect(ids).toEqual(ids.map((_, i) => i + 1));
    expect(ids.slice(0, seen.length)).toEqual(seen);
    expect(JSON.parse(replay.frames.at(-2)!.data).type).toBe("run.completed");

    second.child.kill("SIGTERM");
    expect((await second.child).exitCode).toBe(0);
  }, 300_000);
});
