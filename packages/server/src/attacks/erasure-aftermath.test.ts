import { randomBytes, randomUUID } from "node:crypto";
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { startMessagesServer, type MessagesServer } from "@keen/agent-core/testing";
import type { Kysely } from "kysely";
import { afterAll, beforeAll, expect, it } from "vitest";
import { WebSocket } from "ws";
import { ADMIN_EMAIL, api, createTestRepo, describeEachDatabase, eventually, readSse, signup, useTestServer, type Account } from "../testing/harness.js";

const PASSWORD = "correct horse battery staple";
const GRANTED = 50_000_000;
const RESERVE = 1_000_000;

/** Resolves with what `promise` gave, or with "still open" once `ms` passed. */
function within<T>(promise: Promise<T>, ms: number): Promise<T | "still open"> {
  return Promise.race([promise, new Promise<"still open">((resolve) => setTimeout(() => resolve("still open"), ms).unref())]);
}

function openWebSocket(url: string, headers: Record<string, string>): Promise<{ closed: Promise<{ code: number }> }> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { headers });
    const closed = new Promise<{ code: number }>((done) => socket.on("close", (code) => done({ code })));
    socket.on("open", () => resolve({ closed }));
    socket.on("error", reject);
  });
}

/**
 * What an erasure leaves of the user elsewhere: webhook endpoints and messages that name them,
 * a run of theirs still going (and its hold), credentials and open streams.
 */
describeEachDatabase("attack: what survives an account's erasure", (database) => {
  let model: MessagesServer;
  // Every model call waits long and then fails: a run stays `running` until it is cancelled.
  beforeAll(async () => {
    model = await startMessagesServer({ policy: () => ({ fault: { status: 529, delayMs: 60_000 } }) });
  });
  afterAll(async () => {
    await model?.close();
  });
  const t = useTestServer(() => ({
    ...database.settings,
    modelBaseUrl: model.url,
    modelMaxRetries: 0,
    localMode: true,
    rateLimit: 100_000,
    runReserve: RESERVE,
    webhookAllowPrivate: true,
    // Open streams re-check their credentials only once a minute: closing them is the erasure's job.
    sseHeartbeatMs: 60_000,
  }));
  const db = () => t.server.database.db as Kysely<any>;

  let admin: Account;
  let repo: string;
  beforeAll(async () => {
    admin = await signup(t.url, ADMIN_EMAIL);
    repo = await createTestRepo();
  });
  const grant = async (teamId: string) => {
    expect((await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId, amount: GRANTED, idempotencyKey: `g-${randomUUID()}` } })).status).toBe(201);
  };
  const erase = (user: Account) => api(t.url, "/v1/me", { method: "DELETE", headers: user.headers, body: { password: PASSWORD } });
  const balance = async (teamId: string) => (await t.server.ledger.getAccount((await t.server.ledger.openWallet({ teamId })).id)).balance;

  const signedInTo = async (email: string, teamId: string) => {
    const login = await api(t.url, "/v1/auth/login", { body: { email, password: PASSWORD, teamId } });
    expect(login.status).toBe(200);
    return { authorization: `Bearer ${login.body.accessToken}` };
  };

  /** An owner's team with `member` joined through an invite, and both one's tokens for that team. */
  async function sharedTeam(): Promise<{ member: Account; teamId: string; ownerInTeam: Record<string, string>; memberInTeam: Record<string, string> }> {
    const ownerEmail = `o-${randomBytes(5).toString("hex")}@keen.test`;
    const owner = await signup(t.url, ownerEmail);
    const email = `m-${randomBytes(5).toString("hex")}@keen.test`;
    const member = await signup(t.url, email, { verifyEmail: true });
    const team = await api(t.url, "/v1/teams", { headers: owner.headers, body: { name: "Shared" } });
    const invite = await api(t.url, `/v1/teams/${team.body.id}/invites`, { headers: owner.headers, body: { email, role: "admin", password: PASSWORD } });
    expect((await api(t.url, "/v1/invites/accept", { headers: member.headers, body: { token: invite.body.token } })).status).toBe(200);
    await grant(team.body.id);
    return { member, teamId: team.body.id, ownerInTeam: await signedInTo(ownerEmail, team.body.id), memberInTeam: await signedInTo(email, team.body.id) };
  }

  const runningRun = async (headers: Record<string, string>) => {
    const created = await api(t.url, "/v1/runs", { headers, body: { vision: "Write the notes file", repo: { path: repo } } });
    expect(created.status, JSON.stringify(created.body)).toBe(202);
    await eventually(async () => (await api(t.url, `/v1/runs/${created.body.id}`, { headers })).body.status === "running", 30_000, "the run to start");
    return created.body.id as string;
  };
  const cancelled = async (headers: Record<string, string>, runId: string) => {
    expect((await api(t.url, `/v1/runs/${runId}/cancel`, { method: "POST", headers })).status).toBe(202);
    await eventually(async () => ["cancelled", "interrupted", "failed"].includes((await api(t.url, `/v1/runs/${runId}`, { headers })).body.status), 30_000, "the run to end");
  };

  it("erasure deletes the user's webhook endpoints and every message about their runs, on anyone's endpoint", async () => {
    const { member, teamId, ownerInTeam, memberInTeam } = await sharedTeam();
    const hook = (headers: Record<string, string>) => api(t.url, "/v1/webhooks", { headers, body: { url: "http://127.0.0.1:9/hook", events: ["run.cancelled"], password: PASSWORD } });
    const mine = await hook(memberInTeam);
    const theirs = await hook(ownerInTeam);
    expect(mine.status).toBe(201);
    expect(theirs.status).toBe(201);
    // A run of the member's ends: one message for each endpoint, both naming the member; the
    // receiver refuses, so both stay pending for their next attempt.
    const runId = await runningRun(memberInTeam);
    await cancelled(memberInTeam, runId);
    const messages = () => db().selectFrom("webhook_messages").select(["webhook_id", "status", "body"]).where("team_id", "=", teamId).execute();
    await eventually(async () => (await messages()).length === 2, 20_000, "the run's webhook messages");
    expect((await messages()).every((m) => String(m.body).includes(member.userId))).toBe(true);

    expect((await erase(member)).status).toBe(200);
    expect(await db().selectFrom("webhooks").select("id").where("user_id", "=", member.userId).execute()).toEqual([]);
    expect((await db().selectFrom("webhooks").select("id").where("team_id", "=", teamId).execute()).map((w) => w.id)).toEqual([theirs.body.id]);
    expect((await messages()).filter((m) => String(m.body).includes(member.userId))).toEqual([]);
    expect(await db().selectFrom("webhook_deliveries").select("id").where("webhook_id", "=", mine.body.id).execute()).toEqual([]);
  }, 120_000);

  it("a running run holds the erasure off (its hold kept); once it ends the erasure removes it and its workspace, and no credit is made or lost", async () => {
    const user = await signup(t.url);
    await grant(user.teamId);
    const runId = await runningRun(user.headers);
    expect(await balance(user.teamId)).toBe(GRANTED - RESERVE);
    const refused = await erase(user);
    expect(refused.status).toBe(409);
    expect(refused.body.error.code).toBe("run_not_finished");
    // Refused as a whole: the user, the run, its hold and its workspace are as they were.
    expect((await api(t.url, `/v1/runs/${runId}`, { headers: user.headers })).body.status).toBe("running");
    expect(await balance(user.teamId)).toBe(GRANTED - RESERVE);
    await cancelled(user.headers, runId);
    const charged = Number((await db().selectFrom("runs").select("charged").where("id", "=", runId).executeTakeFirstOrThrow()).charged ?? 0);
    expect((await erase(user)).status).toBe(200);
    expect(await db().selectFrom("runs").select("id").where("user_id", "=", user.userId).execute()).toEqual([]);
    await expect(stat(join(t.server.config.workspacesDir, user.userId))).rejects.toMatchObject({ code: "ENOENT" });
    expect(await balance(user.teamId)).toBe(GRANTED - charged);
    expect((await t.server.ledger.verify()).ok).toBe(true);
  }, 120_000);

  it("the erased user's token, API key and open SSE and WebSocket streams stop at once", async () => {
    const { member, ownerInTeam, memberInTeam } = await sharedTeam();
    // The owner's run in the shared team keeps going, so streams of it stay open.
    const runId = await runningRun(ownerInTeam);
    const key = await api(t.url, "/v1/auth/api-keys", { headers: memberInTeam, body: { name: "ci", scopes: ["sessions:read"], password: PASSWORD } });
    expect(key.status).toBe(201);
    const keyHeaders = { "x-api-key": key.body.key };
    // The key is verified (and cached by this process) before the erasure.
    expect((await api(t.url, `/v1/runs/${runId}`, { headers: keyHeaders })).status).toBe(200);
    const sse = readSse(`${t.url}/v1/runs/${runId}/events`, memberInTeam);
    const ws = await openWebSocket(`${t.url.replace("http", "ws")}/v1/runs/${runId}/stream`, keyHeaders);
    expect(await within(sse, 500)).toBe("still open");

    expect((await erase(member)).status).toBe(200);
    const ended = await within(sse, 3_000);
    expect(ended).not.toBe("still open");
    if (ended !== "still open") expect(ended.frames.map((f) => f.event)).toContain("error");
    const closed = await within(ws.closed, 3_000);
    expect(closed).not.toBe("still open");
    if (closed !== "still open") expect(closed.code).toBe(1008);
    expect((await api(t.url, `/v1/runs/${runId}`, { headers: keyHeaders })).status).toBe(401);
    expect((await api(t.url, `/v1/runs/${runId}`, { headers: memberInTeam })).status).toBe(401);
    // The owner's own stream of the run is untouched.
    expect((await api(t.url, `/v1/runs/${runId}`, { headers: ownerInTeam })).status).toBe(200);
    await cancelled(ownerInTeam, runId);
  }, 120_000);
});
