// Billing, budgets, teams and invites, audit and data rights against a real server (PGlite and
// PostgreSQL), with gateway-kit's Stripe stand-in behind the real Stripe SDK and the offline model.
import { randomBytes, randomUUID } from "node:crypto";
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import type { MessagesServer } from "@keen/agent-core/testing";
import { createStripeClient } from "@keen/gateway-kit";
import { startFakeStripe, type FakeStripe } from "@keen/gateway-kit/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { OPERATIONS } from "./http/openapi.js";
import { ADMIN_EMAIL, api, createTestRepo, describeEachDatabase, eventually, signup, useTestServer, type Account } from "./testing/harness.js";
import { scriptedModel } from "./testing/model.js";

const SECRET = `whsec_${randomBytes(16).toString("hex")}`;
const PACKS = [
  { id: "starter", name: "10 credits", credits: 10_000_000, unitAmount: 1_000, currency: "usd" },
  { id: "team", name: "100 credits", credits: 100_000_000, unitAmount: 9_000, currency: "usd" },
];
const PASSWORD = "correct horse battery staple";
const email = (tag: string) => `${tag}-${randomBytes(5).toString("hex")}@keen.test`;

describeEachDatabase("account routes", (database) => {
  let fake: FakeStripe;
  let model: MessagesServer;
  beforeAll(async () => {
    fake = await startFakeStripe();
    // The model takes a while to write, so a run just created is reliably still going.
    model = await scriptedModel({ writeDelayMs: 1_500 });
  });
  afterAll(async () => {
    await fake?.close();
    await model?.close();
  });
  const t = useTestServer(() => ({
    ...database.settings,
    modelBaseUrl: model.url,
    localMode: true,
    stripeSecretKey: fake.clientOptions.apiKey,
    stripeWebhookSecrets: [SECRET],
    stripeApiUrl: `http://${fake.host}:${fake.port}`,
    creditPacks: PACKS,
    billingSuccessUrl: "https://app.keen.test/billing/done",
    billingCancelUrl: "https://app.keen.test/billing",
  }));

  let admin: Account;
  beforeAll(async () => {
    admin = await signup(t.url, ADMIN_EMAIL);
  });

  const balance = async (account: Account) => (await api(t.url, "/v1/credits", { headers: account.headers })).body.balance as number;
  const grant = async (teamId: string, amount: number) => {
    const res = await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId, amount, idempotencyKey: `grant-${randomUUID()}` } });
    expect(res.status).toBe(201);
  };
  /** A team owned by `owner` with `member` joined through an invite. */
  const teamWith = async (owner: Account, role: "admin" | "member" | "viewer" = "member") => {
    const team = await api(t.url, "/v1/teams", { headers: owner.headers, body: { name: "Platform" } });
    expect(team.status).toBe(201);
    const address = email("member");
    const invite = await api(t.url, `/v1/teams/${team.body.id}/invites`, { headers: owner.headers, body: { email: address, role, password: PASSWORD } });
    expect(invite.status).toBe(201);
    const member = await signup(t.url, address, { verifyEmail: true });
    const accepted = await api(t.url, "/v1/invites/accept", { headers: member.headers, body: { token: invite.body.token } });
    expect(accepted.status).toBe(200);
    return { teamId: team.body.id as string, member };
  };
  /** Runs the scripted model on a fresh local repository and waits for the run to finish. */
  const finishedRun = async (account: Account, whileGoing?: (runId: string) => Promise<void>) => {
    await grant(account.teamId, 50_000_000);
    const repo = await createTestRepo();
    const created = await api(t.url, "/v1/runs", { headers: account.headers, body: { vision: "Write the notes file", repo: { path: repo } } });
    expect(created.status).toBe(202);
    await whileGoing?.(created.body.id);
    await eventually(async () => {
      const run = await api(t.url, `/v1/runs/${created.body.id}`, { headers: account.headers });
      return ["succeeded", "failed"].includes(run.body.status);
    }, 120_000, "the run to finish");
    return created.body.id as string;
  };
  const uploadRepo = async (account: Account) => {
    const dir = await createTestRepo({ "README.md": "# uploaded\n" });
    const { stdout } = await execa("tar", ["-czf", "-", "--exclude=.git", "-C", dir, "."], { encoding: "buffer" });
    const res = await fetch(`${t.url}/v1/uploads`, { method: "POST", headers: { ...account.headers, "content-type": "application/gzip" }, body: Buffer.from(stdout) });
    expect(res.status).toBe(201);
    return ((await res.json()) as { id: string }).id;
  };

  describe("billing", () => {
    const stripe = () => createStripeClient(fake.clientOptions);
    const event = (type: string, object: Record<string, unknown>, id = `evt_${randomUUID()}`) =>
      JSON.stringify({ id, object: "event", api_version: "2026-02-25.clover", created: Math.floor(Date.now() / 1000), livemode: false, type, data: { object } });
    const deliver = async (payload: string, given?: string | null) => {
      const signature = given === undefined ? stripe().webhooks.generateTestHeaderString({ payload, secret: SECRET }) : given;
      const res = await fetch(`${t.url}/v1/billing/webhook`, {
        method: "POST",
        headers: { "content-type": "application/json", ...(signature !== null ? { "stripe-signature": signature } : {}) },
        body: payload,
      });
      return { status: res.status, body: (await res.json()) as any };
    };

    it("sells a pack through Stripe Checkout and grants it once however often the webhook is delivered", async () => {
      const owner = await signup(t.url);
      const started = await api(t.url, "/v1/billing/checkout", { headers: owner.headers, body: { packId: "starter", idempotencyKey: "buy-starter-1" } });
      expect(started.status).toBe(201);
      expect(started.body).toMatchObject({ teamId: owner.teamId, pack: { id: "starter", credits: 10_000_000 }, url: expect.stringContaining(started.body.sessionId) });
      const sent = fake.sessions.get(started.body.sessionId)!;
      // The price comes from the server's pack list, the wallet is the team's.
      expect(sent.amount_total).toBe(1_000);
      expect(sent.metadata).toMatchObject({ keen_owner: `team:${owner.teamId}`, keen_credits: "10000000", keen_pack_id: "starter" });
      // A retried request is the same session.
      const retried = await api(t.url, "/v1/billing/checkout", { headers: owner.headers, body: { packId: "starter", idempotencyKey: "buy-starter-1" } });
      expect(retried.body.sessionId).toBe(started.body.sessionId);
      expect(await balance(owner)).toBe(0);

      const paid = event("checkout.session.completed", fake.completeSession(started.body.sessionId));
      expect(await deliver(paid)).toEqual({ status: 200, body: { received: true, duplicate: false, outcome: "granted" } });
      expect(await balance(owner)).toBe(10_000_000);
      // The same event again, re-signed later, and another event for the same session: no second grant.
      expect((await deliver(paid)).body).toMatchObject({ duplicate: true });
      expect((await deliver(paid)).status).toBe(200);
      const again = await deliver(event("checkout.session.async_payment_succeeded", fake.sessions.get(started.body.sessionId)!));
      expect(again.status).toBe(200);
      expect(await balance(owner)).toBe(10_000_000);
    });

    it("refuses a missing, forged or tampered signature with 400 and grants nothing", async () => {
      const owner = await signup(t.url);
      const started = await api(t.url, "/v1/billing/checkout", { headers: owner.headers, body: { packId: "team" } });
      const payload = event("checkout.session.completed", fake.completeSession(started.body.sessionId));
      const missing = await deliver(payload, null);
      expect(missing.status).toBe(400);
      expect(missing.body.error.requestId).toBeTruthy();
      const forged = await deliver(payload, stripe().webhooks.generateTestHeaderString({ payload, secret: `whsec_${randomBytes(16).toString("hex")}` }));
      expect(forged).toMatchObject({ status: 400, body: { error: { code: "invalid_signature" } } });
      const signed = stripe().webhooks.generateTestHeaderString({ payload, secret: SECRET });
      const tampered = await deliver(payload.replace("100000000", "900000000"), signed);
      expect(tampered.status).toBe(400);
      const stale = await deliver(payload, stripe().webhooks.generateTestHeaderString({ payload, secret: SECRET, timestamp: Math.floor(Date.now() / 1000) - 3600 }));
      expect(stale.status).toBe(400);
      expect(await balance(owner)).toBe(0);
    });

    it("lets only the team's owners buy: unknown packs 400, members 403, other teams 404", async () => {
      const owner = await signup(t.url);
      const { teamId, member } = await teamWith(owner, "admin");
      expect((await api(t.url, "/v1/billing/checkout", { headers: owner.headers, body: { packId: "gold" } })).body.error.code).toBe("unknown_pack");
      const byAdmin = await api(t.url, "/v1/billing/checkout", { headers: member.headers, body: { packId: "starter", teamId } });
      expect(byAdmin.status).toBe(403);
      const stranger = await signup(t.url);
      expect((await api(t.url, "/v1/billing/checkout", { headers: stranger.headers, body: { packId: "starter", teamId } })).status).toBe(404);
      expect((await api(t.url, "/v1/billing/checkout", { headers: owner.headers, body: { packId: "starter", teamId } })).status).toBe(201);
      const packs = await api(t.url, "/v1/billing/packs", { headers: stranger.headers });
      expect(packs.body).toMatchObject({ enabled: true, packs: [{ id: "starter" }, { id: "team" }] });
    });
  });

  describe("teams and invites", () => {
    it("creates a team; an invite is accepted only by its addressee, once", async () => {
      const owner = await signup(t.url);
      const team = await api(t.url, "/v1/teams", { headers: owner.headers, body: { name: "Core" } });
      expect(team.status).toBe(201);
      const address = email("bob");
      const invite = await api(t.url, `/v1/teams/${team.body.id}/invites`, { headers: owner.headers, body: { email: address.toUpperCase(), role: "viewer", password: PASSWORD } });
      expect(invite.status).toBe(201);
      expect(invite.body.email).toBe(address);
      const listed = await api(t.url, `/v1/teams/${team.body.id}/invites`, { headers: owner.headers });
      expect(listed.body.invites).toEqual([expect.objectContaining({ id: invite.body.id, state: "open" })]);
      expect(JSON.stringify(listed.body)).not.toContain(invite.body.token);

      const carol = await signup(t.url);
      expect((await api(t.url, "/v1/invites/accept", { headers: carol.headers, body: { token: invite.body.token } })).status).toBe(404);
      const bob = await signup(t.url, address, { verifyEmail: true });
      const accepted = await api(t.url, "/v1/invites/accept", { headers: bob.headers, body: { token: invite.body.token } });
      expect(accepted.body).toEqual({ teamId: team.body.id, role: "viewer" });
      expect((await api(t.url, "/v1/invites/accept", { headers: bob.headers, body: { token: invite.body.token } })).status).toBe(410);
      const members = await api(t.url, `/v1/teams/${team.body.id}/members`, { headers: bob.headers });
      expect(members.body.members.map((m: { userId: string; role: string }) => [m.userId, m.role]).sort()).toEqual([[owner.userId, "owner"], [bob.userId, "viewer"]].sort());
      const teams = await api(t.url, "/v1/teams", { headers: bob.headers });
      expect(teams.body.teams.map((m: { teamId: string }) => m.teamId)).toContain(team.body.id);

      // A revoked invite cannot be used.
      const second = await api(t.url, `/v1/teams/${team.body.id}/invites`, { headers: owner.headers, body: { email: carol.userId + "@nobody.test", password: PASSWORD } });
      expect((await api(t.url, `/v1/teams/${team.body.id}/invites/${second.body.id}`, { method: "DELETE", headers: owner.headers })).status).toBe(200);
      expect((await api(t.url, `/v1/teams/${team.body.id}/invites/${second.body.id}`, { method: "DELETE", headers: owner.headers })).status).toBe(404);
    });

    it("enforces roles: nobody raises themselves, only owners touch owners, the last owner stays", async () => {
      const owner = await signup(t.url);
      const { teamId, member } = await teamWith(owner, "member");
      const role = (who: Account, userId: string, value: string) => api(t.url, `/v1/teams/${teamId}/members/${userId}`, { method: "PUT", headers: who.headers, body: { role: value, password: PASSWORD } });
      const remove = (who: Account, userId: string) => api(t.url, `/v1/teams/${teamId}/members/${userId}`, { method: "DELETE", headers: who.headers });

      expect((await role(member, member.userId, "admin")).status).toBe(403);
      // The refusal is in the member's own audit chain as a denial, with the status answered.
      const own = await api(t.url, "/v1/audit?limit=500", { headers: member.headers });
      expect(own.body.events.find((e: { action: string }) => e.action === "PUT /v1/teams/:teamId/members/:userId")).toMatchObject({ result: "denied", details: { status: 403 } });
      expect((await role(member, member.userId, "owner")).status).toBe(403);
      expect((await remove(member, owner.userId)).status).toBe(403);
      expect((await api(t.url, `/v1/teams/${teamId}/invites`, { headers: member.headers, body: { email: email("x"), password: PASSWORD } })).status).toBe(403);

      expect((await role(owner, member.userId, "admin")).status).toBe(200);
      // An admin runs the team but cannot make owners, raise itself, or touch an owner.
      expect((await role(member, member.userId, "owner")).status).toBe(403);
      expect((await role(member, owner.userId, "member")).status).toBe(403);
      expect((await remove(member, owner.userId)).status).toBe(403);
      expect((await api(t.url, `/v1/teams/${teamId}/invites`, { headers: member.headers, body: { email: email("o"), role: "owner", password: PASSWORD } })).status).toBe(403);
      expect((await api(t.url, `/v1/teams/${teamId}/invites`, { headers: member.headers, body: { email: email("m"), role: "member", password: PASSWORD } })).status).toBe(201);

      // The last owner can neither step down nor leave.
      const demote = await role(owner, owner.userId, "member");
      expect(demote.status).toBe(409);
      expect(demote.body.error.code).toBe("last_owner");
      expect((await remove(owner, owner.userId)).body.error.code).toBe("last_owner");

      // A second owner makes the first free to leave; a removed member loses the team at once.
      expect((await role(owner, member.userId, "owner")).status).toBe(200);
      expect((await remove(owner, owner.userId)).status).toBe(200);
      expect((await api(t.url, `/v1/teams/${teamId}/members`, { headers: owner.headers })).status).toBe(404);
      const audit = await api(t.url, `/v1/audit?teamId=${teamId}&limit=500`, { headers: member.headers });
      expect(audit.body.events.map((e: { action: string }) => e.action)).toEqual(expect.arrayContaining(["team.role_change", "team.member_remove"]));
    });
  });

  describe("budgets", () => {
    it("shows team and user budgets to members; only owners and admins change the team's", async () => {
      const owner = await signup(t.url);
      const { teamId, member } = await teamWith(owner, "member");
      const set = await api(t.url, "/v1/budgets", { method: "PUT", headers: owner.headers, body: { scope: "team", teamId, period: "monthly", limit: 2_000_000, thresholds: [80, 50] } });
      expect(set.status).toBe(200);
      expect(set.body.team).toEqual([expect.objectContaining({ scope: "team", period: "monthly", limit: 2_000_000, spent: 0, remaining: 2_000_000, thresholds: [50, 80] })]);
      const denied = await api(t.url, "/v1/budgets", { method: "PUT", headers: member.headers, body: { scope: "team", teamId, period: "monthly", limit: 9_000_000 } });
      expect(denied.status).toBe(403);
      const own = await api(t.url, "/v1/budgets", { method: "PUT", headers: member.headers, body: { scope: "user", teamId, period: "daily", limit: 100 } });
      expect(own.status).toBe(200);
      const seen = await api(t.url, `/v1/budgets?teamId=${teamId}`, { headers: member.headers });
      expect(seen.body.team[0].limit).toBe(2_000_000);
      expect(seen.body.user).toEqual([expect.objectContaining({ scope: "user", period: "daily", limit: 100 })]);
      // The owner sees the team's budget, not the member's own.
      expect((await api(t.url, `/v1/budgets?teamId=${teamId}`, { headers: owner.headers })).body.user).toEqual([]);
      const removed = await api(t.url, "/v1/budgets", { method: "PUT", headers: owner.headers, body: { scope: "team", teamId, period: "monthly", limit: null } });
      expect(removed.body.team).toEqual([]);
      // A user budget is not set through an API key.
      const key = await api(t.url, "/v1/auth/api-keys", { headers: member.headers, body: { name: "ci", scopes: ["team:read"], password: "correct horse battery staple" } });
      const viaKey = await api(t.url, "/v1/budgets", { method: "PUT", headers: { "x-api-key": key.body.key ?? key.body.secret }, body: { scope: "user", period: "daily", limit: 1_000_000 } });
      expect(viaKey.status).toBe(403);
    });
  });

  describe("audit", () => {
    it("pages the team's chain by cursor with no gap or repeat, verifies it, and refuses members", async () => {
      const owner = await signup(t.url);
      for (let i = 0; i < 4; i++) await api(t.url, "/v1/me", { headers: owner.headers });
      const seqs: number[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const path: string = `/v1/audit?limit=2${cursor ? `&cursor=${cursor}` : ""}`;
        const page = await api(t.url, path, { headers: owner.headers });
        expect(page.status).toBe(200);
        expect(page.body.events.length).toBeLessThanOrEqual(2);
        seqs.push(...page.body.events.map((e: { seq: number }) => e.seq));
        cursor = page.body.nextCursor;
        pages++;
      } while (cursor && pages < 50);
      expect(seqs.length).toBeGreaterThanOrEqual(5);
      expect(seqs).toEqual(seqs.map((_, i) => i + 1));
      const verified = await api(t.url, "/v1/audit/verify", { headers: owner.headers });
      expect(verified.body).toMatchObject({ ok: true, tenantId: owner.teamId });
      expect(verified.body.rows).toBeGreaterThanOrEqual(seqs.length);

      const { teamId, member } = await teamWith(owner, "member");
      expect((await api(t.url, `/v1/audit?teamId=${teamId}`, { headers: member.headers })).status).toBe(403);
      expect((await api(t.url, `/v1/audit/verify?teamId=${teamId}`, { headers: member.headers })).status).toBe(403);
      expect((await api(t.url, `/v1/audit?teamId=${teamId}`, { headers: owner.headers })).status).toBe(200);
    });
  });

  describe("data rights", () => {
    it("exports the caller's data as a JSON download, to a signed-in user only", async () => {
      const address = email("export");
      const user = await signup(t.url, address);
      await uploadRepo(user);
      const res = await fetch(`${t.url}/v1/me/export`, { method: "POST", headers: user.headers });
      expect(res.status).toBe(200);
      expect(res.headers.get("content-disposition")).toMatch(/^attachment; filename="keen-user-data-/);
      const archive = (await res.json()) as any;
      expect(archive.format).toBe("keen.user-data/1");
      expect(archive.sections.auth.user.email).toBe(address);
      expect(archive.sections.server.uploads).toHaveLength(1);
      expect(Object.keys(archive.sections)).toEqual(expect.arrayContaining(["server", "auth", "audit", "credits", "billing", "budgets"]));
      const key = await api(t.url, "/v1/auth/api-keys", { headers: user.headers, body: { name: "ci", scopes: ["sessions:read"], password: "correct horse battery staple" } });
      expect((await api(t.url, "/v1/me/export", { method: "POST", headers: { "x-api-key": key.body.key ?? key.body.secret } })).status).toBe(403);
    });

    it("erases the account after the password confirms: credentials stop at once, runs, uploads and workspace go", async () => {
      const address = email("erase");
      const user = await signup(t.url, address);
      const key = await api(t.url, "/v1/auth/api-keys", { headers: user.headers, body: { name: "ci", scopes: ["sessions:read"], password: "correct horse battery staple" } });
      const keyHeaders = { "x-api-key": key.body.key ?? key.body.secret };
      expect((await api(t.url, "/v1/me", { headers: keyHeaders })).status).toBe(200);
      const runId = await finishedRun(user, async () => {
        const refused = await api(t.url, "/v1/me", { method: "DELETE", headers: user.headers, body: { password: PASSWORD } });
        expect(refused.status).toBe(409);
        expect(refused.body.error.code).toBe("run_not_finished");
      });
      await uploadRepo(user);
      const workspace = join(t.server.config.workspacesDir, user.userId);
      expect((await stat(workspace)).isDirectory()).toBe(true);

      const missing = await api(t.url, "/v1/me", { method: "DELETE", headers: user.headers, body: {} });
      expect(missing.status).toBe(401);
      expect(missing.body.error.code).toBe("reauthentication_required");
      const wrong = await api(t.url, "/v1/me", { method: "DELETE", headers: user.headers, body: { password: "not the password at all" } });
      expect(wrong.status).toBe(403);
      expect(wrong.body.error.code).toBe("invalid_password");
      expect((await api(t.url, "/v1/me", { method: "DELETE", headers: keyHeaders, body: { password: PASSWORD } })).status).toBe(403);

      const erased = await api(t.url, "/v1/me", { method: "DELETE", headers: user.headers, body: { password: PASSWORD } });
      expect(erased.status).toBe(200);
      expect(erased.body).toMatchObject({ erased: true, userId: user.userId });
      expect((await api(t.url, "/v1/me", { headers: user.headers })).status).toBe(401);
      expect((await api(t.url, "/v1/me", { headers: keyHeaders })).status).toBe(401);
      expect((await api(t.url, "/v1/auth/login", { body: { email: address, password: PASSWORD } })).status).toBe(401);
      const db = t.server.database.db;
      expect(await db.selectFrom("runs").select("id").where("id", "=", runId).execute()).toEqual([]);
      expect(await db.selectFrom("run_events").select("seq").where("run_id", "=", runId).execute()).toEqual([]);
      expect(await db.selectFrom("uploads").select("id").where("user_id", "=", user.userId).execute()).toEqual([]);
      expect(await db.selectFrom("users").select("email").where("id", "=", user.userId).executeTakeFirst()).toEqual({ email: `erased-${user.userId}@erased.invalid` });
      await expect(stat(workspace)).rejects.toMatchObject({ code: "ENOENT" });
      // The erasure itself is on the record, without the user's address.
      const trail = await db.selectFrom("audit_log").select(["action", "actor_id"]).where("action", "=", "privacy.erase").where("target", "=", `user:${user.userId}`).execute();
      expect(trail).toEqual([{ action: "privacy.erase", actor_id: null }]);
    });

    it("refuses to erase the only owner of a team others belong to", async () => {
      const owner = await signup(t.url);
      await teamWith(owner, "admin");
      const res = await api(t.url, "/v1/me", { method: "DELETE", headers: owner.headers, body: { password: PASSWORD } });
      expect(res.status).toBe(409);
      expect(res.body.error.code).toBe("last_owner");
      expect((await api(t.url, "/v1/me", { headers: owner.headers })).status).toBe(200);
    });
  });

  describe("tenant isolation", () => {
    // Tenant A holds one of everything; B, signed in and owner of its own team, names A's ids.
    let a: Account;
    let b: Account;
    let aTeam: string;
    let aMember: Account;
    let runId: string;
    let uploadId: string;
    let invite: { id: string; token: string };
    let aKeyId: string;
    let aKey: string;
    let aSessionId: string;
    let aFactorId: string;
    let aWebhookId: string;
    beforeAll(async () => {
      a = await signup(t.url);
      b = await signup(t.url);
      ({ teamId: aTeam, member: aMember } = await teamWith(a, "member"));
      runId = await finishedRun(a);
      uploadId = await uploadRepo(a);
      const created = await api(t.url, `/v1/teams/${aTeam}/invites`, { headers: a.headers, body: { email: email("pending"), password: PASSWORD } });
      invite = { id: created.body.id, token: created.body.token };
      await api(t.url, "/v1/budgets", { method: "PUT", headers: a.headers, body: { scope: "team", teamId: aTeam, period: "total", limit: 1_000 } });
      const key = await api(t.url, "/v1/auth/api-keys", { headers: a.headers, body: { name: "a-key", scopes: ["sessions:read"], password: "correct horse battery staple" } });
      aKeyId = key.body.id;
      aKey = key.body.key ?? key.body.secret;
      aSessionId = (await api(t.url, "/v1/auth/sessions", { headers: a.headers })).body.sessions[0].id;
      aFactorId = (await api(t.url, "/v1/auth/mfa/totp", { headers: a.headers, body: { password: PASSWORD } })).body.factorId;
      // A public address literal: registration needs no DNS, and nothing is delivered to it here.
      aWebhookId = (await api(t.url, "/v1/webhooks", { headers: a.headers, body: { url: "https://93.184.215.14/hooks", events: ["run.completed"], password: PASSWORD } })).body.id;
      expect([aKeyId, aSessionId, aFactorId, aWebhookId].every((id) => typeof id === "string" && id.length > 0)).toBe(true);
    }, 180_000);

    it("answers 404 to every route named with another tenant's ids, and changes nothing", async () => {
      const calls: Array<[string, string, unknown?]> = [
        ["GET", `/v1/runs/${runId}`],
        ["POST", `/v1/runs/${runId}/cancel`],
        ["POST", `/v1/runs/${runId}/resume`],
        ["GET", `/v1/runs/${runId}/diff`],
        ["GET", `/v1/runs/${runId}/archive`],
        ["GET", `/v1/runs/${runId}/events`],
        ["DELETE", `/v1/runs/${runId}`],
        ["POST", "/v1/runs", { vision: "Add notes", repo: { uploadId } }],
        ["GET", `/v1/teams/${aTeam}/members`],
        ["PUT", `/v1/teams/${aTeam}/members/${aMember.userId}`, { role: "admin", password: PASSWORD }],
        ["PUT", `/v1/teams/${aTeam}/members/${b.userId}`, { role: "owner", password: PASSWORD }],
        ["DELETE", `/v1/teams/${aTeam}/members/${aMember.userId}`],
        ["DELETE", `/v1/teams/${aTeam}/members/${a.userId}`],
        ["POST", `/v1/teams/${aTeam}/invites`, { email: email("intruder"), role: "owner", password: PASSWORD }],
        ["GET", `/v1/teams/${aTeam}/invites`],
        ["DELETE", `/v1/teams/${aTeam}/invites/${invite.id}`],
        // A's invite under B's own team, A's member under B's own team.
        ["DELETE", `/v1/teams/${b.teamId}/invites/${invite.id}`],
        ["PUT", `/v1/teams/${b.teamId}/members/${aMember.userId}`, { role: "viewer", password: PASSWORD }],
        ["DELETE", `/v1/teams/${b.teamId}/members/${aMember.userId}`],
        ["POST", "/v1/invites/accept", { token: invite.token }],
        ["GET", `/v1/budgets?teamId=${aTeam}`],
        ["PUT", "/v1/budgets", { scope: "team", teamId: aTeam, period: "total", limit: 999_999_999 }],
        ["PUT", "/v1/budgets", { scope: "user", teamId: aTeam, period: "daily", limit: 5 }],
        ["GET", `/v1/audit?teamId=${aTeam}`],
        ["GET", `/v1/audit?teamId=${a.teamId}`],
        ["GET", `/v1/audit/verify?teamId=${aTeam}`],
        ["POST", "/v1/billing/checkout", { packId: "starter", teamId: aTeam }],
        ["GET", `/v1/webhooks/${aWebhookId}/deliveries`],
        ["DELETE", `/v1/webhooks/${aWebhookId}`],
        // gateway-kit's auth routes that take an id.
        ["DELETE", `/v1/auth/sessions/${aSessionId}`],
        ["DELETE", `/v1/auth/api-keys/${aKeyId}`],
        ["DELETE", `/v1/auth/mfa/factors/${aFactorId}`, { password: PASSWORD }],
      ];
      // Every documented route that takes an id in its path is in the list (OAuth's provider names no tenant's thing).
      const templates = (path: string) => path.replace(/\?.*$/, "");
      for (const op of OPERATIONS.filter((o) => o.path.includes(":") && !o.path.includes("/oauth/"))) {
        const pattern = new RegExp(`^${op.path.replace(/:[A-Za-z_]+/g, "[^/]+")}$`);
        expect(calls.some(([method, path]) => method === op.method.toUpperCase() && pattern.test(templates(path))), `${op.method} ${op.path} is called`).toBe(true);
      }
      for (const [method, path, body] of calls) {
        const res = await api(t.url, path, { method, headers: b.headers, ...(body !== undefined ? { body } : {}) });
        expect(res.status, `${method} ${path}`).toBe(404);
        expect(res.body.error.code, `${method} ${path}`).toBe("not_found");
      }
      // A's webhook is still there.
      expect((await api(t.url, "/v1/webhooks", { headers: a.headers })).body.webhooks.map((w: { id: string }) => w.id)).toContain(aWebhookId);
      // An API key of B's team is no key to A's team either, whatever its scopes.
      const key = await api(t.url, "/v1/auth/api-keys", { headers: b.headers, body: { name: "all", scopes: ["sessions:read", "sessions:write", "team:read", "team:manage", "audit:read", "billing:manage"], password: "correct horse battery staple" } });
      const keyHeaders = { "x-api-key": key.body.key ?? key.body.secret };
      // (gateway-kit's account routes refuse API keys outright, whatever the id: left out here.)
      for (const [method, path, body] of calls.filter(([, p]) => !p.startsWith(`/v1/teams/${b.teamId}`) && p !== "/v1/invites/accept" && !p.startsWith("/v1/auth/"))) {
        const res = await api(t.url, path, { method, headers: keyHeaders, ...(body !== undefined ? { body } : {}) });
        expect(res.status, `key: ${method} ${path}`).toBe(404);
      }

      // The WebSocket stream refuses the upgrade the same way.
      const ws = new WebSocket(`${t.url.replace("http", "ws")}/v1/runs/${runId}/stream`, { headers: b.headers });
      const refused = await new Promise<number>((resolve, reject) => {
        ws.once("unexpected-response", (_req, res) => resolve(res.statusCode ?? 0));
        ws.once("open", () => reject(new Error("opened another tenant's stream")));
        ws.once("error", () => {});
      });
      expect(refused).toBe(404);

      // A's things are as they were.
      expect((await api(t.url, `/v1/runs/${runId}`, { headers: a.headers })).status).toBe(200);
      const members = await api(t.url, `/v1/teams/${aTeam}/members`, { headers: a.headers });
      expect(members.body.members.map((m: { userId: string; role: string }) => [m.userId, m.role]).sort()).toEqual([[a.userId, "owner"], [aMember.userId, "member"]].sort());
      const invites = await api(t.url, `/v1/teams/${aTeam}/invites`, { headers: a.headers });
      expect(invites.body.invites.find((i: { id: string }) => i.id === invite.id).state).toBe("open");
      expect((await api(t.url, `/v1/budgets?teamId=${aTeam}`, { headers: a.headers })).body.team[0].limit).toBe(1_000);
      // B's own audit chain records those calls with the status they were answered with.
      const trail = await api(t.url, "/v1/audit?limit=500", { headers: b.headers });
      const lookup = trail.body.events.find((e: { action: string }) => e.action === "GET /v1/runs/:id");
      expect(lookup).toMatchObject({ result: "failure", target: `/v1/runs/${runId}`, details: { status: 404 } });

      // A's API key, session and second factor still work and exist.
      expect((await api(t.url, "/v1/me", { headers: { "x-api-key": aKey } })).status).toBe(200);
      expect(JSON.stringify((await api(t.url, "/v1/auth/mfa", { headers: a.headers })).body)).toContain(aFactorId);
      expect((await api(t.url, "/v1/me", { headers: a.headers })).status).toBe(200);
    });

    it("answers malformed input with a typed 4xx, never a 500", async () => {
      const cases: Array<[string, string, unknown?]> = [
        ["PUT", "/v1/budgets", { scope: "team", period: "monthly", limit: -1 }],
        ["PUT", "/v1/budgets", { scope: "team", period: "monthly", limit: 1.5 }],
        ["PUT", "/v1/budgets", { scope: "team", period: "weekly", limit: 1 }],
        ["PUT", "/v1/budgets", { scope: "project", period: "monthly", limit: 1 }],
        ["PUT", "/v1/budgets", { scope: "team", period: "monthly", limit: 1, extra: true }],
        ["PUT", "/v1/budgets", { scope: "team", period: "monthly", limit: 1, thresholds: [0] }],
        ["PUT", "/v1/budgets", { scope: "team", period: "monthly", limit: 2 ** 60 }],
        ["PUT", "/v1/budgets", "not an object"],
        ["GET", "/v1/budgets?teamId="],
        ["GET", "/v1/budgets?teamId=%00"],
        ["GET", `/v1/budgets?teamId=${"x".repeat(500)}`],
        ["GET", "/v1/budgets?teamId=a&teamId=b"],
        ["POST", "/v1/teams", { name: "" }],
        ["POST", "/v1/teams", { name: "bad\u0000name" }],
        ["POST", "/v1/teams", { name: "x".repeat(1000) }],
        ["POST", "/v1/teams", { name: ["array"] }],
        ["POST", `/v1/teams/${a.teamId}/invites`, { email: "not-an-email" }],
        ["POST", `/v1/teams/${a.teamId}/invites`, { email: "ok@keen.test", role: "god" }],
        ["POST", `/v1/teams/${a.teamId}/invites`, { email: "ok@keen.test", expiresInHours: 0 }],
        ["PUT", `/v1/teams/${a.teamId}/members/${a.userId}`, { role: "root" }],
        ["GET", `/v1/teams/${"%E2%80%AE".repeat(80)}/members`],
        ["GET", "/v1/teams/%00/members"],
        ["DELETE", `/v1/teams/${a.teamId}/invites/${"z".repeat(300)}`],
        ["POST", "/v1/invites/accept", { token: "short" }],
        ["POST", "/v1/invites/accept", { token: "kti_" + "A".repeat(60) }],
        ["GET", "/v1/audit?cursor=abc"],
        ["GET", "/v1/audit?cursor=0"],
        ["GET", "/v1/audit?cursor=99999999999999999999"],
        ["GET", "/v1/audit?limit=0"],
        ["GET", "/v1/audit?limit=100000"],
        ["GET", "/v1/audit?surprise=1"],
        ["POST", "/v1/billing/checkout", { packId: "../../etc" }],
        ["POST", "/v1/billing/checkout", {}],
        ["POST", "/v1/billing/checkout", { packId: "starter", idempotencyKey: "x" }],
        ["DELETE", "/v1/me", { password: 5 }],
        ["DELETE", "/v1/me", { password: "x".repeat(300) }],
      ];
      for (const [method, path, body] of cases) {
        const res = await api(t.url, path, { method, headers: a.headers, ...(body !== undefined ? { body } : {}) });
        expect(res.status, `${method} ${path} ${JSON.stringify(body)}`).toBeGreaterThanOrEqual(400);
        expect(res.status, `${method} ${path} ${JSON.stringify(body)}`).toBeLessThan(500);
        expect(res.body.error?.code, `${method} ${path}`).toBeTruthy();
        expect(res.body.error?.requestId, `${method} ${path}`).toBeTruthy();
      }
      // Bodies that are not JSON at all.
      for (const [method, path] of [["PUT", "/v1/budgets"], ["POST", "/v1/teams"], ["POST", "/v1/invites/accept"], ["POST", "/v1/billing/checkout"], ["DELETE", "/v1/me"]] as const) {
        const res = await fetch(`${t.url}${path}`, { method, headers: { ...a.headers, "content-type": "application/json" }, body: "{" });
        expect(res.status, `${method} ${path}`).toBe(400);
        const huge = await fetch(`${t.url}${path}`, { method, headers: { ...a.headers, "content-type": "application/json" }, body: JSON.stringify({ name: "x".repeat(100_000) }) });
        expect(huge.status, `${method} ${path} huge`).toBe(413);
      }
      // The webhook's raw body is bounded too, and a GET is not a delivery.
      const big = await fetch(`${t.url}/v1/billing/webhook`, { method: "POST", headers: { "stripe-signature": "t=1,v1=00" }, body: "x".repeat(2 * 1024 * 1024) });
      expect(big.status).toBe(413);
      expect((await fetch(`${t.url}/v1/billing/webhook`)).status).toBe(405);
    });
  });
});
