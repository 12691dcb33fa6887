import { mkdtemp, readFile, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import type { MessagesServer } from "@keen/agent-core/testing";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ADMIN_EMAIL, api, createTestRepo, describeEachDatabase, readSse, signup, useTestServer, type Account } from "../testing/harness.js";
import { scriptedModel } from "../testing/model.js";

describeEachDatabase("run results: archive and delete", (database) => {
  let model: MessagesServer;
  beforeAll(async () => {
    model = await scriptedModel({ writeDelayMs: 300 });
  });
  afterAll(async () => {
    await model.close();
  });
  const t = useTestServer(() => ({ ...database.settings, modelBaseUrl: model.url, localMode: true }));
  let owner: Account;

  beforeAll(async () => {
    owner = await signup(t.url);
    const admin = await signup(t.url, ADMIN_EMAIL);
    expect((await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: owner.teamId, amount: 100_000_000, idempotencyKey: `g-${owner.teamId}` } })).status).toBe(201);
  });

  async function finishedRun(): Promise<string> {
    const repo = await createTestRepo({ "README.md": "# app\n" });
    const created = await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "Write the notes file", repo: { path: repo } } });
    expect(created.status).toBe(202);
    // Still queued or running: deleting is refused, nothing is removed.
    const early = await api(t.url, `/v1/runs/${created.body.id}`, { method: "DELETE", headers: owner.headers });
    expect(early.status).toBe(409);
    expect(early.body.error.code).toBe("run_not_finished");
    const earlyArchive = await api(t.url, `/v1/runs/${created.body.id}/archive`, { headers: owner.headers });
    expect(earlyArchive.status).toBe(409);
    const end = await readSse(`${t.url}/v1/runs/${created.body.id}/events`, owner.headers, (f) => f.event === "end");
    expect(JSON.parse(end.frames.at(-1)!.data).status).toBe("succeeded");
    return created.body.id;
  }

  it("GET /archive is a git bundle of the run's branch at its result", async () => {
    const runId = await finishedRun();
    const run = await api(t.url, `/v1/runs/${runId}`, { headers: owner.headers });
    const res = await fetch(`${t.url}/v1/runs/${runId}/archive`, { headers: owner.headers });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("application/x-git-bundle");
    const dir = await mkdtemp(join(tmpdir(), "keen-bundle-test-"));
    const file = join(dir, "r.bundle");
    await writeFile(file, Buffer.from(await res.arrayBuffer()));
    const heads = (await execa("git", ["bundle", "list-heads", file], { cwd: dir })).stdout;
    expect(run.body.branch).toMatch(/^keen\/[0-9a-f]{8}$/);
    expect(heads).toContain(`${run.body.headCommit} refs/heads/${run.body.branch}`);
    await execa("git", ["clone", "-q", "-b", run.body.branch, file, join(dir, "clone")]);
    expect((await execa("git", ["rev-parse", "HEAD"], { cwd: join(dir, "clone") })).stdout.trim()).toBe(run.body.headCommit);
    expect(await readFile(join(dir, "clone", "NOTES.md"), "utf8")).toContain("written by the agent");

    const stranger = await signup(t.url);
    expect((await api(t.url, `/v1/runs/${runId}/archive`, { headers: stranger.headers })).status).toBe(404);
    expect((await api(t.url, `/v1/runs/${runId}`, { method: "DELETE", headers: stranger.headers })).status).toBe(404);
    expect((await api(t.url, `/v1/runs/${runId}`, { headers: owner.headers })).status).toBe(200);
  });

  it("DELETE removes the run and its workspace, or keeps the workspace when the user prefers", async () => {
    const workspace = (runId: string) => join(t.server.config.workspacesDir, owner.userId, runId);
    const removed = await finishedRun();
    expect((await stat(workspace(removed))).isDirectory()).toBe(true);
    const del = await api(t.url, `/v1/runs/${removed}`, { method: "DELETE", headers: owner.headers });
    expect(del.status).toBe(200);
    expect(del.body).toEqual({ id: removed, workspaceKept: false });
    await expect(stat(workspace(removed))).rejects.toThrow();
    expect((await api(t.url, `/v1/runs/${removed}`, { headers: owner.headers })).status).toBe(404);
    expect((await api(t.url, `/v1/runs/${removed}/events?after=0`, { headers: owner.headers })).status).toBe(404);
    expect((await api(t.url, `/v1/runs/${removed}`, { method: "DELETE", headers: owner.headers })).status).toBe(404);

    expect((await api(t.url, "/v1/me/preferences", { headers: owner.headers })).body).toEqual({ keepWorkspaces: false });
    const bad = await api(t.url, "/v1/me/preferences", { method: "PUT", headers: owner.headers, body: { keepWorkspaces: "yes" } });
    expect(bad.status).toBe(400);
    expect((await api(t.url, "/v1/me/preferences", { method: "PUT", headers: owner.headers, body: { keepWorkspaces: true } })).status).toBe(200);
    const kept = await finishedRun();
    const keptBranch = (await api(t.url, `/v1/runs/${kept}`, { headers: owner.headers })).body.branch as string;
    const delKept = await api(t.url, `/v1/runs/${kept}`, { method: "DELETE", headers: owner.headers });
    expect(delKept.body).toEqual({ id: kept, workspaceKept: true });
    // The kept workspace still holds the result, on the run's branch in its clone.
    const checkout = join(workspace(kept), "checkout");
    expect((await execa("git", ["show", `${keptBranch}:NOTES.md`], { cwd: checkout })).stdout).toContain("written by the agent");
    await expect(stat(join(checkout, "NOTES.md"))).rejects.toThrow();
  }, 90_000); // two full runs; on a busy machine each costs seconds
});
