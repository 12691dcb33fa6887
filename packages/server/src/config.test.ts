import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig, settingsHelp, SETTINGS } from "./config.js";

describe("loadConfig", () => {
  it("starts on embedded defaults with no settings at all", () => {
    const config = loadConfig({ env: {} });
    expect(config.port).toBe(8080);
    expect(config.databaseUrl).toBeUndefined();
    expect(config.workspacesDir).toBe(`${config.dataDir}/workspaces`);
  });

  it("caps open event streams at 20 per user and 2000 per process unless told otherwise", () => {
    expect(loadConfig({ env: {} })).toMatchObject({ maxStreamsPerUser: 20, maxStreams: 2000 });
    expect(loadConfig({ env: { KEEN_MAX_STREAMS_PER_USER: "5" }, flags: { maxStreams: "50" } })).toMatchObject({ maxStreamsPerUser: 5, maxStreams: 50 });
  });

  it("takes env variables and lets flags win", () => {
    const config = loadConfig({ env: { PORT: "9000", KEEN_DATA_DIR: "/tmp/a", KEEN_ADMIN_EMAILS: "A@x.io, b@y.io" }, flags: { port: "9100" } });
    expect(config.port).toBe(9100);
    expect(config.dataDir).toBe("/tmp/a");
    expect(config.adminEmails).toEqual(["a@x.io", "b@y.io"]);
  });

  it.each([
    [{ PORT: "eighty" }, /--port \(PORT\)/],
    [{ PORT: "70000" }, /--port/],
    [{ PORT: "-1" }, /--port/],
    [{ PORT: "1.5" }, /--port/],
    [{ DATABASE_URL: "mysql://x" }, /--database-url \(DATABASE_URL\): must be a postgres:\/\/ URL/],
    [{ KEEN_DATABASE_SCHEMA: "x; drop table users" }, /--database-schema/],
    [{ LOG_LEVEL: "loud" }, /--log-level/],
    [{ KEEN_WORKERS: "NaN" }, /--workers/],
    [{ KEEN_RUN_RESERVE: "9007199254740993" }, /--run-reserve/],
    [{ KEEN_SANDBOX: "maybe" }, /--sandbox/],
    [{ ANTHROPIC_BASE_URL: "file:///etc/passwd" }, /--model-base-url/],
    [{ STRIPE_SECRET_KEY: "pk_test_publishable" }, /--stripe-secret-key \(STRIPE_SECRET_KEY\)/],
    [{ STRIPE_SECRET_KEY: "sk_test_abc", STRIPE_WEBHOOK_SECRET: "whsec_a" }, /--billing-success-url \(KEEN_BILLING_SUCCESS_URL\): is needed when a Stripe key is set/],
    [{ STRIPE_SECRET_KEY: "sk_test_abc", KEEN_BILLING_SUCCESS_URL: "https://a.test/ok", KEEN_BILLING_CANCEL_URL: "https://a.test/no" }, /--stripe-webhook-secret/],
    [{ STRIPE_WEBHOOK_SECRET: "secret-without-prefix" }, /--stripe-webhook-secret/],
    [{ KEEN_CREDIT_PACKS: "[{" }, /--credit-packs \(KEEN_CREDIT_PACKS\): must be a JSON array of packs/],
    [{ KEEN_CREDIT_PACKS: '[{"id":"a","name":"A","credits":1.5,"unitAmount":100,"currency":"usd"}]' }, /--credit-packs/],
    [{ KEEN_CREDIT_PACKS: "[]" }, /--credit-packs/],
    [{ KEEN_MAX_STREAMS_PER_USER: "0" }, /--max-streams-per-user \(KEEN_MAX_STREAMS_PER_USER\)/],
    [{ KEEN_MAX_STREAMS: "-5" }, /--max-streams \(KEEN_MAX_STREAMS\)/],
  ])("refuses %j with one line naming the setting", (env, reason) => {
    let error: unknown;
    try {
      loadConfig({ env });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toMatch(reason);
    expect((error as Error).message).not.toContain("\n");
  });

  it("turns billing on with a key, its secrets, the return URLs and the packs", () => {
    const config = loadConfig({
      env: {
        STRIPE_SECRET_KEY: "sk_test_abc",
        STRIPE_WEBHOOK_SECRET: "whsec_new, whsec_old",
        KEEN_BILLING_SUCCESS_URL: "https://a.test/ok",
        KEEN_BILLING_CANCEL_URL: "https://a.test/no",
        KEEN_CREDIT_PACKS: '[{"id":"big","name":"Big","credits":5000000,"unitAmount":500,"currency":"eur"}]',
      },
    });
    expect(config.stripeWebhookSecrets).toEqual(["whsec_new", "whsec_old"]);
    expect(config.creditPacks).toEqual([{ id: "big", name: "Big", credits: 5_000_000, unitAmount: 500, currency: "eur" }]);
    expect(loadConfig({ env: {} }).stripeSecretKey).toBeUndefined();
  });

  it("refuses unknown flags", () => {
    expect(() => loadConfig({ flags: { prot: 1 } as never })).toThrow(/unknown setting prot/);
  });

  it("lists every setting in the help text", () => {
    const help = settingsHelp();
    for (const setting of SETTINGS) {
      expect(help).toContain(setting.flag);
      expect(help).toContain(setting.env);
    }
  });
});
