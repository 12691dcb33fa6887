import { randomBytes, randomUUID } from "node:crypto";
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { startMessagesServer, type MessagesServer } from "@keen/agent-core/testing";
import { startFakeStripe, type FakeStripe } from "@keen/gateway-kit/testing";
import { execa } from "execa";
import type { Kysely } from "kysely";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ADMIN_EMAIL, api, createTestRepo, describeEachDatabase, eventually, signup, useTestServer, type Account } from "../testing/harness.js";

const PASSWORD = "correct horse battery staple";
const GRANTED = 50_000_000;
// Six rounds in `npm test`; `npm run test:chaos` runs fifty.
const ROUNDS = Number(process.env.KEEN_ERASURE_RACE_ROUNDS ?? 6);
/** How far apart a round's creates are sent (the erasure, with its password check, takes tens of ms). */
const SPREADS_MS = [0, 20, 50, 120, 250];

/**
 * `DELETE /v1/me` while the same user's requests create things: a run, a resume, an upload, a
 * webhook, an API key, a team, an accepted invite, a credits checkout. Whichever lands first,
 * afterwards the erased user owns nothing (no runs, uploads, webhooks, keys, memberships,
 * workspace folder), no hold is left open, nothing was answered with a 5xx, and a create that
 * lost to the erasure says so (410 `account_erased`) or no longer gets in (401).
 */
describeEachDatabase("attack: creating requests racing the account's erasure", (database) => {
  let model: MessagesServer;
  let fake: FakeStripe;
  beforeAll(async () => {
    // Every model call is refused: a run ends `interrupted` at once (resumable), charging nothing.
    model = await startMessagesServer({ policy: () => ({ fault: { status: 529 } }) });
    fake = await startFakeStripe();
  });
  afterAll(async () => {
    await model?.close();
    await fake?.close();
  });
  const t = useTestServer(() => ({
    ...database.settings,
    modelBaseUrl: model.url,
    modelMaxRetries: 0,
    localMode: true,
    rateLimit: 100_000,
    maxRunsPerUser: 10,
    workers: 8,
    webhookAllowPrivate: true,
    stripeSecretKey: fake.clientOptions.apiKey,
    stripeWebhookSecrets: [`whsec_${randomBytes(16).toString("hex")}`],
    stripeApiUrl: `http://${fake.host}:${fake.port}`,
    creditPacks: [{ id: "starter", name: "10 credits", credits: 10_000_000, unitAmount: 1_000, currency: "usd" }],
    billingSuccessUrl: "https://app.keen.test/billing/done",
    billingCancelUrl: "https://app.keen.test/billing",
  }));

  let admin: Account;
  let repo: string;
  let tarball: Buffer;
  beforeAll(async () => {
    admin = await signup(t.url, ADMIN_EMAIL);
    repo = await createTestRepo();
    const { stdout } = await execa("tar", ["-czf", "-", "--exclude=.git", "-C", repo, "."], { encoding: "buffer" });
    tarball = Buffer.from(stdout);
  });

  const db = () => t.server.database.db as Kysely<any>;
  const grant = async (teamId: string) => {
    expect((await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId, amount: GRANTED, idempotencyKey: `g-${randomUUID()}` } })).status).toBe(201);
  };
  const runsEnded = (userId: string) =>
    eventually(async () => (await db().selectFrom("runs").select("id").where("user_id", "=", userId).where("status", "in", ["queued", "running"]).execute()).length === 0, 120_000, "the user's runs to end");
  const erase = (user: Account) => api(t.url, "/v1/me", { method: "DELETE", headers: user.headers, body: { password: PASSWORD } });

  /** What the user still owns, in every table a create writes to and on disk. */
  async function leftovers(user: Account) {
    const count = async (table: string, column = "user_id") => Number((await db().selectFrom(table).select((eb) => eb.fn.countAll().as("n")).where(column, "=", user.userId).executeTakeFirstOrThrow()).n);
    const folder = await stat(join(t.server.config.workspacesDir, user.userId)).then(
      () => true,
      () => false,
    );
    return {
      runs: await count("runs"),
      uploads: await count("uploads"),
      webhooks: await count("webhooks"),
      apiKeys: await count("api_keys"),
      memberships: await count("memberships"),
      sessions: await count("auth_sessions"),
      folder,
    };
  }

  it(`${ROUNDS} rounds: every creating request at once with the erasure leaves nothing of the user`, async () => {
    const owner = await signup(t.url);
    const teamRes = await api(t.url, "/v1/teams", { headers: owner.headers, body: { name: "Other" } });
    expect(teamRes.status).toBe(201);
    const otherTeam = teamRes.body.id as string;
    const outcomes = new Map<string, Set<number>>();
    // Each round's user, prepared a few at a time: a run that ended interrupted (to resume) and
    // an invite to another team (to accept).
    const prepare = async () => {
      const email = `race-${randomBytes(5).toString("hex")}@keen.test`;
      const user = await signup(t.url, email, { verifyEmail: true });
      await grant(user.teamId);
      const first = await api(t.url, "/v1/runs", { headers: user.headers, body: { vision: "Write the notes file", repo: { path: repo } } });
      expect(first.status).toBe(202);
      const invite = await api(t.url, `/v1/teams/${otherTeam}/invites`, { headers: owner.headers, body: { email, role: "member", password: PASSWORD } });
      expect(invite.status).toBe(201);
      await runsEnded(user.userId);
      return { user, first, invite };
    };
    const prepared: Array<Awaited<ReturnType<typeof prepare>>> = [];
    while (prepared.length < ROUNDS) prepared.push(...(await Promise.all(Array.from({ length: Math.min(4, ROUNDS - prepared.length) }, prepare))));
    for (let round = 0; round < ROUNDS; round++) {
      const { user, first, invite } = prepared[round]!;

      const creates: Record<string, () => Promise<{ status: number; body: any }>> = {
        run: () => api(t.url, "/v1/runs", { headers: user.headers, body: { vision: "Another", repo: { path: repo } } }),
        resume: () => api(t.url, `/v1/runs/${first.body.id}/resume`, { method: "POST", headers: user.headers }),
        upload: async () => {
          const res = await fetch(`${t.url}/v1/uploads`, { method: "POST", headers: { ...user.headers, "content-type": "application/gzip" }, body: tarball });
          return { status: res.status, body: await res.json() };
        },
        webhook: () => api(t.url, "/v1/webhooks", { headers: user.headers, body: { url: "http://127.0.0.1:9/hook", events: ["run.completed"], password: PASSWORD } }),
        apiKey: () => api(t.url, "/v1/auth/api-keys", { headers: user.headers, body: { name: "ci", scopes: ["sessions:read"], password: PASSWORD } }),
        team: () => api(t.url, "/v1/teams", { headers: user.headers, body: { name: "Mine" } }),
        invite: () => api(t.url, "/v1/invites/accept", { headers: user.headers, body: { token: invite.body.token } }),
        checkout: () => api(t.url, "/v1/billing/checkout", { headers: user.headers, body: { packId: "starter" } }),
      };
      // Each create sent after its own random delay within the round's spread, so across rounds
      // some land before the erasure, some while it runs and some after it.
      const spread = SPREADS_MS[round % SPREADS_MS.length]!;
      const after = (ms: number) => new Promise((r) => setTimeout(r, ms));
      const [erased, ...created] = await Promise.all([erase(user), ...Object.values(creates).map((create) => after(Math.floor(Math.random() * spread)).then(create))]);
      const names = Object.keys(creates);
      created.forEach((res, i) => {
        const name = names[i]!;
        if (!outcomes.has(name)) outcomes.set(name, new Set());
        outcomes.get(name)!.add(res.status);
        expect(res.status, `${name}: ${JSON.stringify(res.body)}`).toBeLessThan(500);
        if (res.status === 410) expect(res.body.error.code).toBe("account_erased");
      });
      expect(erased.status, JSON.stringify(erased.body)).toBeLessThan(500);
      if (erased.status !== 200) {
        // A run or resume that got in first holds the erasure off until it ends; then it goes through.
        expect(erased.body.error.code).toBe("run_not_finished");
        await runsEnded(user.userId);
        const again = await erase(user);
        expect(again.status, JSON.stringify(again.body)).toBe(200);
      }
      expect(await leftovers(user), `round ${round}`).toEqual({ runs: 0, uploads: 0, webhooks: 0, apiKeys: 0, memberships: 0, sessions: 0, folder: false });
      // Every hold of the user's team was closed: the team's wallet holds what was granted.
      const wallet = await t.server.ledger.openWallet({ teamId: user.teamId });
      expect((await t.server.ledger.getAccount(wallet.id)).balance, `round ${round}`).toBe(GRANTED);
    }
    // A little later still nothing (no job left to start a run for the erased user).
    await new Promise((r) => setTimeout(r, 500));
    for (const [name, statuses] of outcomes) console.log(`${database.kind} ${name}: ${[...statuses].sort().join(", ")}`);
    expect((await db().selectFrom("runs").select("id").where("status", "in", ["queued", "running"]).execute()).length).toBe(0);
    expect((await t.server.ledger.verify()).ok).toBe(true);
  }, 600_000);
});
