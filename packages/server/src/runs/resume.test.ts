import { priceUsage } from "@keen/gateway-kit";
import { reply, requestPosition, startMessagesServer, type MessagesServer } from "@keen/agent-core/testing";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ADMIN_EMAIL, api, createTestRepo, describeEachDatabase, readSse, signup, useTestServer, type Account } from "../testing/harness.js";

describeEachDatabase("resume", (database) => {
  let model: MessagesServer;
  let overloaded = true;
  beforeAll(async () => {
    // Overloaded (529) while the flag is up; otherwise writes NOTES.md and completes.
    model = await startMessagesServer({
      policy: (request) => {
        if (overloaded) return reply.error(529);
        if (requestPosition(request).phase === "EXPLORE") return reply.toolUse("finish_explore", { summary: "Looked.", confidence: 0.9, next_phase: "COMPLETE" });
        const wrote = (request.messages as Array<{ role: string; content: unknown }>).some(
          (m) => m.role === "assistant" && Array.isArray(m.content) && m.content.some((b: { type: string; name?: string }) => b.type === "tool_use" && b.name === "write_file"),
        );
        if (!wrote) return reply.toolUse("write_file", { path: "NOTES.md", content: "resumed\n" });
        return reply.toolUse("complete_task", { summary: "Wrote NOTES.md.", status: "success" });
      },
    });
  });
  afterAll(async () => {
    await model.close();
  });
  const t = useTestServer(() => ({ ...database.settings, modelBaseUrl: model.url, localMode: true, modelMaxRetries: 0 }));
  let owner: Account;
  const granted = 100_000_000;

  beforeAll(async () => {
    owner = await signup(t.url);
    const admin = await signup(t.url, ADMIN_EMAIL);
    expect((await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: owner.teamId, amount: granted, idempotencyKey: `g-${owner.teamId}` } })).status).toBe(201);
  });

  it("an interrupted run resumes to completion, events continue gap-free, credits settle to the whole run's price once", async () => {
    overloaded = true;
    const repo = await createTestRepo({ "README.md": "# app\n" });
    const created = await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "Write the notes file", repo: { path: repo } } });
    expect(created.status).toBe(202);
    const runId = created.body.id as string;
    const first = await readSse(`${t.url}/v1/runs/${runId}/events`, owner.headers, (f) => f.event === "end");
    expect(JSON.parse(first.frames.at(-1)!.data).status).toBe("interrupted");
    const interrupted = await api(t.url, `/v1/runs/${runId}`, { headers: owner.headers });
    expect(interrupted.body.status).toBe("interrupted");

    // Not resumable: a stranger's view (404), and a finished-successfully run (409) further below.
    const stranger = await signup(t.url);
    expect((await api(t.url, `/v1/runs/${runId}/resume`, { method: "POST", headers: stranger.headers })).status).toBe(404);

    overloaded = false;
    const resumed = await api(t.url, `/v1/runs/${runId}/resume`, { method: "POST", headers: owner.headers });
    expect(resumed.status, JSON.stringify(resumed.body)).toBe(202);
    expect(resumed.body.status).toBe("queued");
    const again = await api(t.url, `/v1/runs/${runId}/resume`, { method: "POST", headers: owner.headers });
    expect(again.status).toBe(409);
    expect(again.body.error.code).toBe("run_not_resumable");

    const lastSeq = first.frames.filter((f) => f.event !== "end").at(-1)!.id!;
    const rest = await readSse(`${t.url}/v1/runs/${runId}/events`, { ...owner.headers, "last-event-id": lastSeq }, (f) => f.event === "end");
    expect(JSON.parse(rest.frames.at(-1)!.data).status).toBe("succeeded");
    const all = await readSse(`${t.url}/v1/runs/${runId}/events?after=0`, owner.headers, (f) => f.event === "end");
    const events = all.frames.filter((f) => f.event !== "end").map((f) => JSON.parse(f.data));
    expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1));
    expect(events.at(-1).type).toBe("run.completed");

    const run = await api(t.url, `/v1/runs/${runId}`, { headers: owner.headers });
    expect(run.body.status).toBe("succeeded");
    const usage = events.filter((e) => e.type === "model.usage").reduce(
      (sum, e) => ({
        inputTokens: sum.inputTokens + e.usage.inputTokens,
        outputTokens: sum.outputTokens + e.usage.outputTokens,
        cacheCreationInputTokens: sum.cacheCreationInputTokens + e.usage.cacheCreationInputTokens,
        cacheReadInputTokens: sum.cacheReadInputTokens + e.usage.cacheReadInputTokens,
      }),
      { inputTokens: 0, outputTokens: 0, cacheCreationInputTokens: 0, cacheReadInputTokens: 0 },
    );
    const price = priceUsage(run.body.model, usage);
    expect(price).toBeGreaterThan(0);
    expect(run.body.cost).toBe(price);
    expect((await api(t.url, "/v1/credits", { headers: owner.headers })).body.balance).toBe(granted - price);

    const done = await api(t.url, `/v1/runs/${runId}/resume`, { method: "POST", headers: owner.headers });
    expect(done.status).toBe(409);
    expect(done.body.error.code).toBe("run_not_resumable");
  });
});
