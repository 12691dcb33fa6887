import { expect, it } from "vitest";
import { ADMIN_EMAIL, api, describeEachDatabase, signup, useTestServer, type Account } from "../testing/harness.js";

/**
 * Text a client sends that PostgreSQL cannot store as sent: NUL characters (text and jsonb
 * refuse them), unpaired surrogates and malformed UTF-8 (both would be stored as U+FFFD, so
 * the run would carry other text than the client sent). Every JSON route answers a typed 400
 * and keeps nothing.
 */
describeEachDatabase("attack: unstorable text in JSON bodies", (database) => {
  const t = useTestServer(() => ({ ...database.settings, workers: 0, modelBaseUrl: "http://127.0.0.1:9", maxRunsPerUser: 50 }));
  let a: Account;
  const repo = { url: "https://git.example/app.git" };

  async function send(path: string, method: string, body: string | Buffer, headers: Record<string, string> = a.headers) {
    const res = await fetch(`${t.url}${path}`, { method, headers: { ...headers, "content-type": "application/json" }, body });
    return { status: res.status, body: (await res.json()) as { error?: { code: string; message: string; requestId: string } } };
  }

  it("a NUL, an unpaired surrogate or malformed UTF-8 in any JSON body is a 400 that keeps nothing", async () => {
    a = await signup(t.url);
    const admin = await signup(t.url, ADMIN_EMAIL);
    expect((await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: a.teamId, amount: 50_000_000, idempotencyKey: `g-${a.teamId}` } })).status).toBe(201);
    const run = (vision: string, extra: Record<string, unknown> = {}) => JSON.stringify({ vision, repo, ...extra });
    const bad: Array<[string, string, string | Buffer, Record<string, string>?]> = [
      ["/v1/runs", "POST", run("Add a README\u0000")],
      ["/v1/runs", "POST", run("Add a README", { options: { validate: "npm test\u0000; rm -rf /" } })],
      ["/v1/runs", "POST", JSON.stringify({ vision: "Add a README", repo: { ...repo, "\u0000": 1 } })],
      ["/v1/runs", "POST", '{"vision":"Add a README \\ud800","repo":{"url":"https://git.example/app.git"}}'],
      ["/v1/runs", "POST", '{"vision":"Add a README \\udfff\\ud800","repo":{"url":"https://git.example/app.git"}}'],
      ["/v1/runs", "POST", Buffer.concat([Buffer.from('{"vision":"Add a README '), Buffer.from([0xc3, 0x28, 0xff]), Buffer.from('","repo":{"url":"https://git.example/app.git"}}')])],
      ["/v1/webhooks", "POST", JSON.stringify({ url: "https://hooks.example.com/\u0000", events: ["run.completed"], password: "correct horse battery staple" })],
      ["/v1/teams", "POST", Buffer.concat([Buffer.from('{"name":"team '), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('"}')])],
      ["/v1/me/preferences", "PUT", '{"keepWorkspaces":true,"\\u0000":1}'],
      ["/v1/budgets", "PUT", JSON.stringify({ scope: "team", teamId: `${a.teamId}\u0000`, period: "monthly", limit: 5 })],
      ["/v1/billing/checkout", "POST", JSON.stringify({ packId: "pack", idempotencyKey: "abcdefgh\u0000" })],
      ["/v1/invites/accept", "POST", JSON.stringify({ token: `${"t".repeat(30)}\u0000` })],
      ["/v1/me", "DELETE", JSON.stringify({ password: "correct horse battery staple\u0000" })],
      ["/v1/admin/credits/grant", "POST", JSON.stringify({ teamId: a.teamId, amount: 5, idempotencyKey: "grant-key-\u0000" }), admin.headers],
    ];
    for (const [path, method, body, headers] of bad) {
      const res = await send(path, method, body, headers);
      const label = `${method} ${path} ${String(body).slice(0, 80)}`;
      expect(res.status, label).toBe(400);
      expect(res.body.error?.code, label).toBe("invalid_request");
      expect(res.body.error?.requestId, label).toBeTruthy();
    }
    // Nothing was kept: no run, no webhook, no team, no grant; the account still works.
    expect((await api(t.url, "/v1/runs", { headers: a.headers })).body.runs).toEqual([]);
    expect((await api(t.url, "/v1/webhooks", { headers: a.headers })).body.webhooks ?? (await api(t.url, "/v1/webhooks", { headers: a.headers })).body).toEqual([]);
    expect((await api(t.url, "/v1/teams", { headers: a.headers })).body.teams).toHaveLength(1);
    expect((await api(t.url, "/v1/credits", { headers: a.headers })).body.balance).toBe(50_000_000);
    expect((await api(t.url, "/v1/me", { headers: a.headers })).status).toBe(200);
    // Well-formed text outside the BMP, escaped or not, is kept exactly as sent.
    const vision = "Add a README 🦀 \\ud83e\\udd80 é";
    const ok = await send("/v1/runs", "POST", `{"vision":"${vision}","repo":{"url":"https://git.example/app.git"}}`);
    expect(ok.status).toBe(202);
    expect((ok.body as unknown as { vision: string }).vision).toBe("Add a README 🦀 🦀 é");
  });

  it("bodies that are too large, compressed or not JSON get a typed 4xx", async () => {
    const huge = await send("/v1/runs", "POST", run400k());
    expect(huge.status).toBe(413);
    expect(huge.body.error?.code).toBe("payload_too_large");
    const gzip = await fetch(`${t.url}/v1/runs`, { method: "POST", headers: { ...a.headers, "content-type": "application/json", "content-encoding": "gzip" }, body: Buffer.from([0x1f, 0x8b, 0x08, 0]) });
    expect(gzip.status).toBe(415);
    for (const body of ["{", "nul", '{"vision":"x"}garbage']) expect((await send("/v1/runs", "POST", body)).status, body).toBe(400);
    const deep = await send("/v1/runs", "POST", `{"vision":"x","repo":${"[".repeat(50_000)}${"]".repeat(50_000)}}`);
    expect(deep.status).toBe(400);
    const text = await fetch(`${t.url}/v1/runs`, { method: "POST", headers: { ...a.headers, "content-type": "text/plain" }, body: JSON.stringify({ vision: "x", repo: { url: "https://git.example/app.git" } }) });
    expect(text.status).toBe(400);
  });

  it("a run-list cursor forged with a time the database cannot hold, or another spelling, is a 400", async () => {
    const id = "run_00000000-0000-0000-0000-000000000000";
    const forged = ["+275760-09-13T00:00:00.000Z", "-271821-04-20T00:00:00.000Z", "0000-01-01T00:00:00.000Z", "2020-01-01", "2020-01-01T00:00:00Z", " 2020-01-01T00:00:00.000Z", "0"];
    for (const at of forged) {
      const cursor = Buffer.from(`${at}|${id}`).toString("base64url");
      const res = await api(t.url, `/v1/runs?cursor=${cursor}`, { headers: a.headers });
      expect(res.status, at).toBe(400);
      expect(res.body.error.code, at).toBe("invalid_request");
    }
    const trailing = Buffer.from(`2020-01-01T00:00:00.000Z|${id}|x`).toString("base64url");
    expect((await api(t.url, `/v1/runs?cursor=${trailing}`, { headers: a.headers })).status).toBe(400);
    // The cursors the API hands out still page.
    const page = await api(t.url, "/v1/runs?limit=1", { headers: a.headers });
    const cursor = Buffer.from(`${new Date().toISOString()}|${id}`).toString("base64url");
    expect((await api(t.url, `/v1/runs?cursor=${cursor}`, { headers: a.headers })).status).toBe(200);
    expect(page.status).toBe(200);
  });

  function run400k(): string {
    return JSON.stringify({ vision: "x".repeat(400_000), repo });
  }
});
