import { it } from "vitest";
import WebSocket from "ws";
import { ADMIN_EMAIL, api, readSse, signup, startTestServer } from "../testing/harness.js";

it("probe3", async () => {
  const t = await startTestServer({ workers: 0, modelBaseUrl: "http://127.0.0.1:9", sseHeartbeatMs: 200, rateLimit: 10000 } as never);
  try {
    const url = t.url;
    const a = await signup(url);
    const b = await signup(url);
    const admin = await signup(url, ADMIN_EMAIL);
    await api(url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: a.teamId, amount: 50_000_000, idempotencyKey: `g-${a.teamId}` } });
    const run = (await api(url, "/v1/runs", { headers: a.headers, body: { vision: "x", repo: { url: "https://git.example/app.git" } } })).body;
    const out: Record<string, unknown> = {};
    for (const id of ["-1", "abc", "1e3", "99999999999999999999", "1.5", " 1", "0x10"]) {
      const res = await fetch(`${url}/v1/runs/${run.id}/events`, { headers: { ...a.headers, "last-event-id": id } });
      out[`lei ${id}`] = res.status;
      await res.body?.cancel();
      const res2 = await fetch(`${url}/v1/runs/${run.id}/events?after=${encodeURIComponent(id)}`, { headers: a.headers });
      out[`after ${id}`] = res2.status;
      await res2.body?.cancel();
    }
    const other = await fetch(`${url}/v1/runs/${run.id}/events`, { headers: b.headers });
    out.sseOther = other.status;
    await other.body?.cancel();
    const ws = (path: string, headers: Record<string, string>) =>
      new Promise<string>((resolve) => {
        const s = new WebSocket(`${url.replace("http", "ws")}${path}`, { headers });
        s.on("unexpected-response", (_req, res) => resolve(`http ${res.statusCode}`));
        s.on("open", () => { resolve("open"); s.close(); });
        s.on("error", (e) => resolve(`error ${e.message}`));
      });
    out.wsNoAuth = await ws(`/v1/runs/${run.id}/stream`, {});
    out.wsOther = await ws(`/v1/runs/${run.id}/stream`, b.headers);
    out.wsNeg = await ws(`/v1/runs/${run.id}/stream?after=-1`, a.headers);
    out.wsBadPct = await ws(`/v1/runs/%E0%A4%A/stream`, a.headers);
    out.wsQueryToken = await ws(`/v1/runs/${run.id}/stream?access_token=${a.accessToken}`, {});
    out.wsOk = await ws(`/v1/runs/${run.id}/stream`, a.headers);
    // member of A's team streams, then gets erased
    const inv = await api(url, `/v1/teams/${a.teamId}/invites`, { headers: a.headers, body: { email: "member-x@keen.test", role: "member" } });
    const m = await signup(url, "member-x@keen.test");
    const accepts = await Promise.all(Array.from({ length: 10 }, () => api(url, "/v1/invites/accept", { headers: m.headers, body: { token: inv.body.token } })));
    out.accepts = accepts.map((r) => r.status).join(",");
    // switch member to team A
    const sw = await api(url, "/v1/auth/token/switch-team", { headers: m.headers, body: { teamId: a.teamId } });
    out.switch = sw.status;
    const refresh = await api(url, "/v1/auth/login", { body: { email: "member-x@keen.test", password: "correct horse battery staple" } });
    out.loginKeys = Object.keys(refresh.body).join(",");
    const key = await api(url, "/v1/auth/api-keys", { headers: m.headers, body: { name: "ci", scopes: ["sessions:read"] } });
    out.key = key.status;
    const rt = refresh.body.refreshToken;
    const erased = await api(url, "/v1/me", { method: "DELETE", headers: m.headers, body: { password: "correct horse battery staple" } });
    out.erased = erased.status;
    out.refreshAfter = (await api(url, "/v1/auth/token/refresh", { body: { refreshToken: rt } })).status;
    out.keyAfter = (await api(url, "/v1/me", { headers: { "x-api-key": key.body.key ?? key.body.secret } })).status;
    out.tokenAfter = (await api(url, "/v1/me", { headers: m.headers })).status;
    // delete run while streaming: cancel then delete
    const sse = readSse(`${url}/v1/runs/${run.id}/events`, a.headers, (f) => f.event === "end");
    await api(url, `/v1/runs/${run.id}/cancel`, { method: "POST", headers: a.headers });
    out.sseEnd = (await sse).frames.map((f) => f.event).join(",");
    for (const [k, v] of Object.entries(out)) console.log(k.padEnd(20), v);
  } finally {
    await t.stop();
  }
}, 120_000);
