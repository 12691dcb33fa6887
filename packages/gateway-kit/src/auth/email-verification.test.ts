import { sql } from "kysely";
import { afterAll, beforeAll, expect, it } from "vitest";
import { describeEachDatabase } from "../testing/each-database.js";
import { createMemoryMailer } from "../testing/memory-mailer.js";
import { createAuthService } from "./auth-service.js";
import { createKyselyAuthStores } from "./kysely-stores.js";
import { sha256Hex } from "./secrets.js";
import { migrateForTests, PASSWORD, signup, startTestApp, uniqueEmail, type TestApp } from "./test-app.js";

describeEachDatabase("email verification", (fixture) => {
  const mailer = createMemoryMailer();
  let app: TestApp;
  beforeAll(async () => {
    await migrateForTests(fixture);
    app = await startTestApp(fixture, { emailVerification: { mailer, limits: { perAccount: { limit: 3, windowSeconds: 3600 } } } });
  });
  afterAll(() => app?.close());

  const db = () => fixture.database.db;
  const request = (token: string) => app.request("POST", "/auth/email/verification", { token, body: {} });
  const confirm = (token: string, verificationToken: string) => app.request("POST", "/auth/email/verification/confirm", { token, body: { token: verificationToken } });
  const mailedToken = (email: string) => /evt_[A-Za-z0-9_-]{43}/.exec(mailer.to(email).at(-1)?.text ?? "")?.[0] ?? "";
  const verified = async (accessToken: string) => (await app.request("GET", "/auth/me", { token: accessToken })).body.user.emailVerified as boolean;
  const login = async (email: string) => (await app.request("POST", "/auth/login", { body: { email, password: PASSWORD } })).body.accessToken as string;

  it("verifies the account that asked with the mailed token, stores only its hash, and answers a repeat the same", async () => {
    const user = await signup(app);
    expect(await verified(user.accessToken)).toBe(false);
    const asked = await request(user.accessToken);
    expect(asked.status).toBe(202);
    expect(asked.body).toMatchObject({ email: user.email, sent: true, emailVerified: false });
    expect(mailer.to(user.email)).toHaveLength(1);
    expect(mailer.to(user.email)[0]!.subject).toBe("Confirm your email address");
    const token = mailedToken(user.email);
    expect(token).not.toBe("");
    const rows = await sql<{ row: string }>`select row_to_json(f)::text as row from auth_flows f where user_id = ${user.user.id}`.execute(db());
    expect(rows.rows).toHaveLength(1);
    expect(rows.rows[0]!.row).toContain(sha256Hex(token));
    expect(rows.rows[0]!.row).not.toContain(token);

    const confirmed = await confirm(user.accessToken, token);
    expect(confirmed.status).toBe(200);
    expect(confirmed.body).toEqual({ userId: user.user.id, email: user.email, emailVerified: true, alreadyVerified: false });
    expect(await verified(user.accessToken)).toBe(true);
    const again = await confirm(user.accessToken, token);
    expect(again.status).toBe(200);
    expect(again.body.alreadyVerified).toBe(true);
    // Verified already: nothing more is sent.
    expect((await request(user.accessToken)).body).toMatchObject({ sent: false, emailVerified: true });
    expect(mailer.to(user.email)).toHaveLength(1);
  });

  it("refuses another account's, a made-up, an expired and a used token with coded 4xx, never verifying", async () => {
    const owner = await signup(app);
    const other = await signup(app);
    await request(owner.accessToken);
    const first = mailedToken(owner.email);
    const stolen = await confirm(other.accessToken, first);
    expect(stolen.status).toBe(400);
    expect(stolen.body.error.code).toBe("invalid_verification_token");
    expect(await verified(other.accessToken)).toBe(false);
    expect(await verified(owner.accessToken)).toBe(false);
    for (const made of [`evt_${"A".repeat(43)}`, "evt_short", "x".repeat(200)]) {
      const res = await confirm(owner.accessToken, made);
      expect(res.status, made).toBe(400);
      expect(res.body.error.code).toBe("invalid_verification_token");
    }

    app.clock.advance(24 * 3600_000 + 1000);
    const fresh = await login(owner.email);
    const late = await confirm(fresh, first);
    expect(late.status).toBe(410);
    expect(late.body.error).toMatchObject({ code: "verification_token_expired", details: { reason: "expired" } });
    expect(await verified(fresh)).toBe(false);

    await request(fresh);
    const second = mailedToken(owner.email);
    expect((await confirm(fresh, second)).status).toBe(200);
    // Single use: once spent, the token verifies nothing again (here: after an operator took the mark back).
    await db().updateTable("users").set({ email_verified: false }).where("id", "=", owner.user.id).execute();
    const reused = await confirm(fresh, second);
    expect(reused.status).toBe(410);
    expect(reused.body.error.code).toBe("verification_token_used");
    expect(await verified(fresh)).toBe(false);
  });

  it("does not let a token sent to an old address verify the account's new one", async () => {
    const user = await signup(app);
    await request(user.accessToken);
    const token = mailedToken(user.email);
    const moved = uniqueEmail("moved");
    await db().updateTable("users").set({ email: moved }).where("id", "=", user.user.id).execute();
    const res = await confirm(user.accessToken, token);
    expect(res.status).toBe(410);
    expect(res.body.error).toMatchObject({ code: "verification_token_expired", details: { reason: "email_changed" } });
    expect(await verified(user.accessToken)).toBe(false);
  });

  it("caps the messages one account asks for, with Retry-After, and keeps no address in the counters", async () => {
    const user = await signup(app);
    for (let i = 0; i < 3; i++) expect((await request(user.accessToken)).status).toBe(202);
    const capped = await request(user.accessToken);
    expect(capped.status).toBe(429);
    expect(capped.body.error).toMatchObject({ code: "verification_email_limit", details: { scope: "user" } });
    expect(Number(capped.headers.get("retry-after"))).toBeGreaterThan(0);
    expect(mailer.to(user.email)).toHaveLength(3);
    const keys = await db().selectFrom("auth_counters").select("key").execute();
    expect(keys.map((k) => k.key).join(" ")).not.toContain(user.email);
  });

  it("withdraws the token when the mailer fails, with a coded error", async () => {
    const user = await signup(app);
    const failing = createAuthService({
      stores: createKyselyAuthStores(db()),
      keys: app.keys,
      issuer: "https://keen.test",
      audience: "keen-api",
      now: app.clock.now,
      emailVerification: { mailer: { send: async () => Promise.reject(new Error("relay down")) } },
    });
    const principal = await failing.verifyAccessToken(user.accessToken);
    await expect(failing.requestEmailVerification(principal)).rejects.toMatchObject({ code: "email_delivery_failed" });
    expect(await db().selectFrom("auth_flows").select("id").where("user_id", "=", user.user.id).execute()).toEqual([]);
  });
});
