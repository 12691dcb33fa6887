import { describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { ADMIN_EMAIL, api, createTestRepo, readSse, signup, useTestServer, type Account } from "../testing/harness.js";

/** Resolves with what `promise` gave, or with "still open" once `ms` passed. */
function within<T>(promise: Promise<T>, ms: number): Promise<T | "still open"> {
  return Promise.race([promise, new Promise<"still open">((resolve) => setTimeout(() => resolve("still open"), ms).unref())]);
}

function openWebSocket(url: string, headers: Record<string, string>): Promise<{ closed: Promise<{ code: number; reason: string }>; socket: WebSocket }> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { headers });
    const closed = new Promise<{ code: number; reason: string }>((done) => socket.on("close", (code, reason) => done({ code, reason: String(reason) })));
    socket.on("open", () => resolve({ closed, socket }));
    socket.on("error", reject);
  });
}

/**
 * A run's event stream is long-lived (a run takes minutes to hours). Credentials that end while it
 * is open (a revoked API key, a signed-out session) must end the stream too, not only refuse the
 * next connection.
 */
describe("open event streams when their credentials end", () => {
  // No workers: the run stays queued, so its streams stay open until something closes them.
  const t = useTestServer(() => ({ localMode: true, workers: 0, sseHeartbeatMs: 100 }));

  async function queuedRun(owner: Account, apiKey: string): Promise<string> {
    const repo = await createTestRepo();
    const created = await api(t.url, "/v1/runs", { headers: { "x-api-key": apiKey }, body: { vision: "Write the notes file", repo: { path: repo } } });
    expect(created.status, JSON.stringify(created.body)).toBe(202);
    return created.body.id;
  }

  async function account(): Promise<{ owner: Account; apiKey: string; keyId: string }> {
    const owner = await signup(t.url);
    const admin = await signup(t.url, ADMIN_EMAIL).catch(() => undefined);
    const adminHeaders = admin?.headers ?? (await api(t.url, "/v1/auth/login", { body: { email: ADMIN_EMAIL, password: "correct horse battery staple" } }).then((r) => ({ authorization: `Bearer ${r.body.accessToken}` })));
    await api(t.url, "/v1/admin/credits/grant", { headers: adminHeaders, body: { teamId: owner.teamId, amount: 50_000_000, idempotencyKey: `g-${owner.teamId}` } });
    const key = await api(t.url, "/v1/auth/api-keys", { headers: owner.headers, body: { name: "stream", scopes: ["sessions:read", "sessions:write"], password: "correct horse battery staple" } });
    expect(key.status).toBe(201);
    return { owner, apiKey: key.body.key ?? key.body.secret, keyId: key.body.id };
  }

  it("a revoked API key ends its SSE and WebSocket streams", async () => {
    const { owner, apiKey, keyId } = await account();
    const runId = await queuedRun(owner, apiKey);
    const headers = { "x-api-key": apiKey };
    const sse = readSse(`${t.url}/v1/runs/${runId}/events`, headers);
    const ws = await openWebSocket(`${t.url.replace("http", "ws")}/v1/runs/${runId}/stream`, headers);
    // Both are open and stay open while the key is valid.
    expect(await within(sse, 600)).toBe("still open");
    expect(await within(ws.closed, 100)).toBe("still open");

    const revoked = await api(t.url, `/v1/auth/api-keys/${keyId}`, { method: "DELETE", headers: owner.headers });
    expect(revoked.status).toBe(204);
    const ended = await within(sse, 10_000);
    expect(ended).not.toBe("still open");
    if (ended !== "still open") expect(ended.frames.map((f) => f.event)).toContain("error");
    const closed = await within(ws.closed, 10_000);
    expect(closed).not.toBe("still open");
    if (closed !== "still open") expect(closed.code).toBe(1008);
  });

  it("signing out everywhere ends a stream opened with the session's access token", async () => {
    const { owner, apiKey } = await account();
    const runId = await queuedRun(owner, apiKey);
    const sse = readSse(`${t.url}/v1/runs/${runId}/events`, owner.headers);
    expect(await within(sse, 600)).toBe("still open");
    const out = await api(t.url, "/v1/auth/logout/everywhere", { method: "POST", headers: owner.headers, body: {} });
    expect(out.status).toBeLessThan(300);
    expect(await within(sse, 10_000)).not.toBe("still open");
  });
});
