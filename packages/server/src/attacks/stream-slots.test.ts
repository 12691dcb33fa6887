import { request, type ClientRequest, type IncomingMessage } from "node:http";
import { describe, expect, it } from "vitest";
import WebSocket from "ws";
import { ADMIN_EMAIL, api, eventually, signup, useTestServer, type Account } from "../testing/harness.js";

interface Sse {
  status: number;
  code?: string;
  scope?: string;
  req: ClientRequest;
  res: IncomingMessage;
}

/** Opens an SSE stream and resolves once its status is known; a refusal's body is read. */
function openSse(url: string, headers: Record<string, string>): Promise<Sse> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: { accept: "text/event-stream", ...headers } }, (res) => {
      if (res.statusCode === 200) return resolve({ status: 200, req, res });
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (text += chunk));
      res.on("end", () => {
        const error = (JSON.parse(text) as { error: { code: string; details?: { scope?: string } } }).error;
        resolve({ status: res.statusCode!, code: error.code, ...(error.details?.scope ? { scope: error.details.scope } : {}), req, res });
      });
    });
    req.on("error", reject);
    req.end();
  });
}

interface Ws {
  answer: string;
  code?: string;
  socket: WebSocket;
}

/** Opens a WebSocket stream: "open", or the HTTP status (and error code) the upgrade was refused with. */
function openWs(url: string, headers: Record<string, string>): Promise<Ws> {
  return new Promise((resolve) => {
    const socket = new WebSocket(url, { headers });
    socket.on("unexpected-response", (_req, res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (text += chunk));
      res.on("end", () => resolve({ answer: `http ${res.statusCode}`, code: (JSON.parse(text) as { error: { code: string } }).error.code, socket }));
    });
    socket.on("open", () => resolve({ answer: "open", socket }));
    socket.on("error", (error) => resolve({ answer: `error ${error.message}`, socket }));
  });
}

/**
 * One credential opening event streams without end: every one holds a socket, its buffers and a
 * follower until it ends. SSE and WebSocket streams share one cap per user and one per process,
 * a refusal is 429 `too_many_streams` before anything is opened, and a slot comes back when its
 * connection closes, however it closes.
 */
describe("attack: event streams without bound", () => {
  // No workers: the runs stay queued, so their streams stay open until the clients end them.
  const t = useTestServer(() => ({ workers: 0, modelBaseUrl: "http://127.0.0.1:9", maxStreamsPerUser: 3, maxStreams: 5 }));

  async function userWithRun(): Promise<Account & { sse: string; ws: string }> {
    const account = await signup(t.url);
    const admin = await signup(t.url, ADMIN_EMAIL).catch(async () => {
      const login = await api(t.url, "/v1/auth/login", { body: { email: ADMIN_EMAIL, password: "correct horse battery staple" } });
      return { headers: { authorization: `Bearer ${login.body.accessToken}` } };
    });
    expect((await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: account.teamId, amount: 50_000_000, idempotencyKey: `g-${account.teamId}` } })).status).toBe(201);
    const run = await api(t.url, "/v1/runs", { headers: account.headers, body: { vision: "Add a README", repo: { url: "https://git.example/app.git" } } });
    expect(run.status).toBe(202);
    return { ...account, sse: `${t.url}/v1/runs/${run.body.id}/events`, ws: `${t.url.replace("http", "ws")}/v1/runs/${run.body.id}/stream` };
  }

  it("caps one user's SSE and WebSocket streams together, and the process's in all; closed and destroyed connections free their slots", async () => {
    const alice = await userWithRun();
    const bob = await userWithRun();
    // An API key of Alice's counts against Alice, not against a cap of its own.
    const key = await api(t.url, "/v1/auth/api-keys", { headers: alice.headers, body: { name: "streams", scopes: ["sessions:read"], password: "correct horse battery staple" } });
    expect(key.status).toBe(201);
    const aliceKey = { "x-api-key": key.body.key as string };

    const a1 = await openSse(alice.sse, alice.headers);
    const a2 = await openSse(alice.sse, aliceKey);
    const a3 = await openWs(alice.ws, aliceKey);
    expect([a1.status, a2.status, a3.answer]).toEqual([200, 200, "open"]);
    const refusedSse = await openSse(alice.sse, alice.headers);
    expect(refusedSse).toMatchObject({ status: 429, code: "too_many_streams", scope: "user" });
    const refusedWs = await openWs(alice.ws, alice.headers);
    expect(refusedWs).toMatchObject({ answer: "http 429", code: "too_many_streams" });

    // Bob has a cap of his own, but the process holds 5 streams in all.
    const b1 = await openWs(bob.ws, bob.headers);
    const b2 = await openSse(bob.sse, bob.headers);
    expect([b1.answer, b2.status]).toEqual(["open", 200]);
    expect(await openSse(bob.sse, bob.headers)).toMatchObject({ status: 429, code: "too_many_streams", scope: "server" });
    expect(await openWs(bob.ws, bob.headers)).toMatchObject({ answer: "http 429", code: "too_many_streams" });

    // Alice's clients vanish without a goodbye: the SSE socket is destroyed, the WebSocket's
    // TCP connection is dropped with no close frame. Their slots come back.
    a1.res.socket!.destroy();
    a3.socket.terminate();
    const b3 = await eventually(async () => {
      const attempt = await openWs(bob.ws, bob.headers);
      return attempt.answer === "open" ? attempt : false;
    }, 10_000, "a slot freed by a destroyed connection");
    const a4 = await eventually(async () => {
      const attempt = await openSse(alice.sse, alice.headers);
      if (attempt.status === 200) return attempt;
      attempt.req.destroy();
      return false;
    }, 10_000, "Alice's slot back");
    expect(await openWs(alice.ws, alice.headers)).toMatchObject({ answer: "http 429" });

    // Ordinary closes free them too: with everything closed, both users open their full share again.
    a2.req.destroy();
    a4.req.destroy();
    b1.socket.close();
    b2.req.destroy();
    b3.socket.close();
    const reopened = await eventually(async () => {
      const streams = await Promise.all([openSse(alice.sse, alice.headers), openWs(alice.ws, aliceKey), openSse(alice.sse, aliceKey), openWs(bob.ws, bob.headers), openSse(bob.sse, bob.headers)]);
      const opened = streams.every((s) => ("answer" in s ? s.answer === "open" : s.status === 200));
      if (opened) return streams;
      for (const s of streams) "answer" in s ? s.socket.terminate() : s.req.destroy();
      return false;
    }, 10_000, "every slot back");
    for (const s of reopened) "answer" in s ? s.socket.close() : s.req.destroy();
  });
});
