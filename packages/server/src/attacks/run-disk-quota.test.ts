import { randomBytes } from "node:crypto";
import { stat } from "node:fs/promises";
import { join } from "node:path";
import type { MessagesServer } from "@keen/agent-core/testing";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ADMIN_EMAIL, api, createTestRepo, describeEachDatabase, readSse, signup, useTestServer } from "../testing/harness.js";
import { scriptedModel } from "../testing/model.js";

const LIMIT = 400_000;

/**
 * `--max-workspace-bytes` covers a user's run checkouts as well as their uploads: a run whose
 * repository takes the user past it fails `quota_exceeded` before the model is asked anything,
 * its checkout is removed and its hold released.
 */
describeEachDatabase("attack: a run's checkout against the user's disk quota", (database) => {
  let model: MessagesServer;
  beforeAll(async () => {
    model = await scriptedModel();
  });
  afterAll(async () => {
    await model.close();
  });
  const t = useTestServer(() => ({ ...database.settings, modelBaseUrl: model.url, localMode: true, maxWorkspaceBytes: LIMIT, runReserve: 1_000_000 }));

  it("a repository larger than the quota fails the run with quota_exceeded, removes its checkout and charges nothing", async () => {
    const owner = await signup(t.url);
    const admin = await signup(t.url, ADMIN_EMAIL);
    expect((await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: owner.teamId, amount: 10_000_000, idempotencyKey: `g-${owner.teamId}` } })).status).toBe(201);
    // Random bytes: git cannot compress them, so the clone holds them twice (object and file).
    const repo = await createTestRepo({ "README.md": "# app\n", "blob.txt": randomBytes(300_000).toString("base64") });
    const requestsBefore = model.requests.length;
    const created = await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "Write the notes file", repo: { path: repo } } });
    expect(created.status).toBe(202);
    const end = await readSse(`${t.url}/v1/runs/${created.body.id}/events`, owner.headers, (f) => f.event === "end");
    expect(JSON.parse(end.frames.at(-1)!.data).status).toBe("failed");
    const run = await api(t.url, `/v1/runs/${created.body.id}`, { headers: owner.headers });
    expect(run.body.error.code).toBe("quota_exceeded");
    expect(run.body.cost).toBe(0);
    expect(model.requests.length).toBe(requestsBefore);
    await expect(stat(join(t.server.config.workspacesDir, owner.userId, created.body.id))).rejects.toMatchObject({ code: "ENOENT" });
    expect((await api(t.url, "/v1/credits", { headers: owner.headers })).body.balance).toBe(10_000_000);
  });
});
