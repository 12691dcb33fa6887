// Spellings of one identity: an email in another case, with spaces or in fullwidth, and an API key
// with stray whitespace or another case, through the router and through the service a host calls
// directly. One person is one account and one lockout, whatever the spelling.
import { afterAll, beforeAll, expect, it } from "vitest";
import { describeEachDatabase } from "../testing/each-database.js";
import { AuthError } from "../errors.js";
import { migrateForTests, PASSWORD, signup, startTestApp, uniqueEmail, type TestApp } from "./test-app.js";

const codeOf = (error: unknown) => (error instanceof AuthError ? error.code : String(error));

describeEachDatabase("one identity, many spellings", (fixture) => {
  let app: TestApp;
  beforeAll(async () => {
    await migrateForTests(fixture);
    app = await startTestApp(fixture);
  });
  afterAll(() => app?.close());

  const usersWith = async (email: string) =>
    (await fixture.database.db.selectFrom("users").select("email").execute()).filter((u) => u.email.toLowerCase().includes(email.split("@")[0]!.toLowerCase()));

  it("through the router: case, spaces, fullwidth, a trailing dot or an invisible character never make a second account", async () => {
    const local = `ada${Math.random().toString(36).slice(2, 8)}`;
    const email = `${local}@example.com`;
    await signup(app, email);
    const fullwidth = [...local].map((c) => String.fromCharCode(c.charCodeAt(0) + 0xfee0)).join("");
    const variants = [
      email.toUpperCase(),
      `  ${email}\t`,
      `${fullwidth}@example.com`,
      `${local}＠example.com`,
      `${local}@example.com.`,
      `${local}@EXAMPLE.COM`,
      `${local}\u200b@example.com`,
      `${local}@example\u3002com`,
    ];
    for (const variant of variants) {
      const res = await app.request("POST", "/auth/signup", { body: { email: variant, password: PASSWORD } });
      expect(res.status, variant).toBeGreaterThanOrEqual(400);
      expect(res.status, variant).toBeLessThan(500);
    }
    expect(await usersWith(email)).toEqual([{ email }]);
  });

  it("through the service: a variant of a taken email is taken, and signs in to the one account", async () => {
    const email = uniqueEmail("svc");
    const first = await app.service.signup({ email, password: PASSWORD });
    for (const variant of [email.toUpperCase(), ` ${email} `, email.replace("@", "＠")]) {
      const error = await app.service.signup({ email: variant, password: PASSWORD }).then(() => undefined, (e: unknown) => e);
      expect(codeOf(error), variant).toBe("email_taken");
    }
    const login = await app.service.login({ email: ` ${email.toUpperCase()} `, password: PASSWORD });
    expect(login.status).toBe("authenticated");
    if (login.status !== "authenticated") return;
    expect((await app.service.verifyAccessToken(login.accessToken)).userId).toBe(first.user.id);
    expect(await fixture.database.db.selectFrom("users").select("id").where("email", "ilike", email).execute()).toHaveLength(1);
  });

  it("through the service: one lockout per account, whichever case the guesses use", async () => {
    const email = uniqueEmail("lock");
    await app.service.signup({ email, password: PASSWORD });
    const spellings = [email, email.toUpperCase(), ` ${email}`, email.replace(/^./, (c) => c.toUpperCase()), email.replace("@", "＠"), `${email} `];
    const codes: string[] = [];
    for (const spelling of spellings) {
      codes.push(codeOf(await app.service.login({ email: spelling, password: "wrong password!" }, { ip: undefined }).then(() => "ok", (e: unknown) => e)));
    }
    // Five failures lock the account; the sixth spelling is the same account.
    expect(codes.slice(0, 5)).toEqual(Array(5).fill("invalid_credentials"));
    expect(codes[5]).toBe("too_many_attempts");
    const right = await app.service.login({ email: email.toUpperCase(), password: PASSWORD }).then(() => "ok", (e: unknown) => codeOf(e));
    expect(right).toBe("too_many_attempts");
  });

  it("refuses an API key with another case or stray characters with 401, and takes the exact key", async () => {
    const owner = await signup(app);
    const created = await app.request("POST", "/auth/api-keys", { token: owner.accessToken, body: { name: "ci", scopes: ["sessions:read"], password: PASSWORD } });
    const key = created.body.key as string;
    expect((await app.request("GET", "/v1/sessions", { headers: { "x-api-key": key } })).status).toBe(200);
    const variants = [key.toUpperCase(), key.toLowerCase(), `${key}x`, key.slice(0, -1), key.replace("keen_", "KEEN_"), `${key},${key}`];
    for (const variant of variants) {
      if (variant === key) continue;
      const res = await app.request("GET", "/v1/sessions", { headers: { "x-api-key": variant } });
      expect(res.status, variant).toBe(401);
      const bearer = await app.request("GET", "/v1/sessions", { headers: { authorization: `Bearer ${variant}` } });
      expect(bearer.status, variant).toBe(401);
    }
  });
});
