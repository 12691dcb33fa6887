import { expect, it } from "vitest";
import WebSocket from "ws";
import { ADMIN_EMAIL, api, describeEachDatabase, readSse, signup, useTestServer, type Account } from "../testing/harness.js";

/** The upgrade's answer: "open", or the HTTP status it was refused with. */
function upgrade(url: string, headers: Record<string, string>): Promise<string> {
  return new Promise((resolve) => {
    const socket = new WebSocket(url, { headers });
    socket.on("unexpected-response", (_req, res) => resolve(`http ${res.statusCode}`));
    socket.on("open", () => {
      resolve("open");
      socket.close();
    });
    socket.on("error", (error) => resolve(`error ${error.message}`));
  });
}

/**
 * Event streams against a client that names another tenant's run, sends cursors that are not
 * the numbers the server hands out, and keeps a stream open while its account is erased.
 */
describeEachDatabase("attack: event streams", (database) => {
  // No workers: the run stays queued and its streams stay open until something ends them.
  const t = useTestServer(() => ({ ...database.settings, workers: 0, modelBaseUrl: "http://127.0.0.1:9", sseHeartbeatMs: 100 }));

  it("refuses bad cursors, other tenants and missing credentials on SSE and WebSocket; ends a stream whose account is erased", async () => {
    const owner = await signup(t.url);
    const admin = await signup(t.url, ADMIN_EMAIL);
    expect((await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: owner.teamId, amount: 50_000_000, idempotencyKey: `g-${owner.teamId}` } })).status).toBe(201);
    const run = await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "Add a README", repo: { url: "https://git.example/app.git" } } });
    expect(run.status).toBe(202);
    const events = `${t.url}/v1/runs/${run.body.id}/events`;
    const stream = `${t.url.replace("http", "ws")}/v1/runs/${run.body.id}/stream`;

    for (const cursor of ["-1", "abc", "1e3", "1.5", "0x10", "99999999999999999999", "9".repeat(16)]) {
      const byHeader = await fetch(events, { headers: { ...owner.headers, "last-event-id": cursor } });
      expect(byHeader.status, `Last-Event-ID ${cursor}`).toBe(400);
      expect(((await byHeader.json()) as { error: { code: string } }).error.code).toBe("invalid_request");
      const byQuery = await fetch(`${events}?after=${encodeURIComponent(cursor)}`, { headers: owner.headers });
      expect(byQuery.status, `after=${cursor}`).toBe(400);
      await byQuery.body?.cancel();
      expect(await upgrade(`${stream}?after=${encodeURIComponent(cursor)}`, owner.headers), `ws after=${cursor}`).toBe("http 400");
    }
    const twice = await fetch(`${events}?after=1&after=2`, { headers: owner.headers });
    expect(twice.status).toBe(400);
    await twice.body?.cancel();

    const stranger: Account = await signup(t.url);
    const theirs = await fetch(events, { headers: stranger.headers });
    expect(theirs.status).toBe(404);
    await theirs.body?.cancel();
    expect(await upgrade(stream, stranger.headers)).toBe("http 404");
    expect(await upgrade(stream, {})).toBe("http 401");
    expect(await upgrade(`${stream}?access_token=${owner.accessToken}`, {})).toBe("http 401");
    expect(await upgrade(`${t.url.replace("http", "ws")}/v1/runs/%E0%A4%A/stream`, owner.headers)).toBe("http 400");
    expect(await upgrade(stream, owner.headers)).toBe("open");

    // A teammate follows the team's run, then erases their account: the stream ends.
    const invite = await api(t.url, `/v1/teams/${owner.teamId}/invites`, { headers: owner.headers, body: { email: "teammate-stream@keen.test", role: "member", password: "correct horse battery staple" } });
    expect(invite.status).toBe(201);
    const mate = await signup(t.url, "teammate-stream@keen.test", { verifyEmail: true });
    expect((await api(t.url, "/v1/invites/accept", { headers: mate.headers, body: { token: invite.body.token } })).status).toBe(200);
    const login = await api(t.url, "/v1/auth/login", { body: { email: "teammate-stream@keen.test", password: "correct horse battery staple", teamId: owner.teamId } });
    expect(login.body.teamId).toBe(owner.teamId);
    const mateHeaders = { authorization: `Bearer ${login.body.accessToken}` };
    let settled = false;
    const following = readSse(events, mateHeaders).finally(() => (settled = true));
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(settled).toBe(false);
    expect((await api(t.url, "/v1/me", { method: "DELETE", headers: mateHeaders, body: { password: "correct horse battery staple" } })).status).toBe(200);
    const ended = await following;
    expect(ended.frames.map((f) => f.event)).toContain("error");
    expect((await fetch(events, { headers: mateHeaders })).status).toBe(401);
  });
});

describeEachDatabase("attack: WebSocket upgrades against the rate limit", (database) => {
  const t = useTestServer(() => ({ ...database.settings, workers: 0, modelBaseUrl: "http://127.0.0.1:9", rateLimit: 8 }));

  it("counts each upgrade as an API request: past the limit, 429 with Retry-After, and nothing is opened", async () => {
    const owner = await signup(t.url);
    const run = `${t.url.replace("http", "ws")}/v1/runs/run_00000000-0000-0000-0000-000000000000/stream`;
    const answers: string[] = [];
    for (let i = 0; i < 12; i++) answers.push(await upgrade(run, owner.headers));
    // The bucket holds 8: the first upgrades get as far as the run lookup (404), the rest are refused.
    expect(answers.slice(0, 8)).toEqual(Array(8).fill("http 404"));
    expect(answers.slice(8)).toEqual(Array(4).fill("http 429"));
    // The same bucket as the HTTP routes.
    const res = await api(t.url, "/v1/me", { headers: owner.headers });
    expect(res.status).toBe(429);
    expect(Number(res.headers.get("retry-after"))).toBeGreaterThan(0);
  });
});
