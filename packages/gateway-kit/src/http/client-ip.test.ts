import { ConfigError } from "../errors.js";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import Koa from "koa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { authMigrations } from "../auth/migrations.js";
import { startTestApp, type TestApp } from "../auth/test-app.js";
import { migrateToLatest } from "../db/migrations.js";
import { errorHandler } from "../http-error.js";
import { createKyselyRateLimitStore } from "../limits/rate-limit-store.js";
import { limitMigrations } from "../limits/migrations.js";
import { rateLimit } from "../limits/rate-limit.js";
import { describeEachDatabase } from "../testing/each-database.js";
import { clientIp, ipLimitKey, normaliseIp, requestIp, type ClientIpOptions } from "./client-ip.js";

/** Serves a Koa app built by `mount` through `app.callback()` and returns a fetch bound to it. */
async function serve(mount: (app: Koa) => void) {
  const app = new Koa();
  app.use(errorHandler());
  mount(app);
  const server = createServer(app.callback());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    get: async (path: string, xff?: string) => {
      const res = await fetch(base + path, { headers: xff === undefined ? {} : { "x-forwarded-for": xff } });
      return { status: res.status, text: await res.text() };
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe("client IP addresses", () => {
  it("normalises addresses and refuses anything that is not one", () => {
    expect(normaliseIp("203.0.113.9")).toBe("203.0.113.9");
    expect(normaliseIp("::ffff:203.0.113.9")).toBe("203.0.113.9");
    expect(normaliseIp("::FFFF:cb00:7109")).toBe("203.0.113.9");
    expect(normaliseIp("[2001:DB8::1]:443")).toBe("2001:db8:0:0:0:0:0:1");
    expect(normaliseIp("203.0.113.9:8080")).toBe("203.0.113.9");
    expect(normaliseIp("x".repeat(8192))).toBeUndefined();
    expect(normaliseIp("1.2.3.4, 5.6.7.8")).toBeUndefined();
    expect(normaliseIp("not-an-ip")).toBeUndefined();
    expect(normaliseIp("")).toBeUndefined();
  });

  it("keys IPv6 by its /64 and IPv4-mapped addresses by their IPv4 form", () => {
    expect(ipLimitKey("2001:db8:1:2:aaaa::1")).toBe("2001:db8:1:2::/64");
    expect(ipLimitKey("2001:db8:1:2:ffff:ffff:ffff:ffff")).toBe("2001:db8:1:2::/64");
    expect(ipLimitKey("2001:db8:1:3::1")).not.toBe(ipLimitKey("2001:db8:1:2::1"));
    expect(ipLimitKey("::ffff:198.51.100.7")).toBe("198.51.100.7");
    expect(ipLimitKey(undefined)).toBe("unknown");
  });

  it("keys IPv6 by a configurable prefix: a provider handing out /48s is counted by its /48", () => {
    // Rotating through the /64s of one /48 stays on one key.
    expect(ipLimitKey("2001:db8:1:2::1", 48)).toBe("2001:db8:1::/48");
    expect(ipLimitKey("2001:db8:1:ffff:1::1", 48)).toBe("2001:db8:1::/48");
    expect(ipLimitKey("2001:db8:2::1", 48)).not.toBe(ipLimitKey("2001:db8:1::1", 48));
    // Lengths between group boundaries mask the bits beyond the prefix.
    expect(ipLimitKey("2001:db8:1:2abc::1", 56)).toBe("2001:db8:1:2a00::/56");
    expect(ipLimitKey("2001:db8:1:2abf::1", 60)).toBe(ipLimitKey("2001:db8:1:2ab0::1", 60));
    expect(ipLimitKey("2001:db8:1:2abf::1", 60)).not.toBe(ipLimitKey("2001:db8:1:2ac0::1", 60));
    // /64 is the default and keeps its key; /128 is the address itself.
    expect(ipLimitKey("2001:db8:1:2:aaaa::1", 64)).toBe(ipLimitKey("2001:db8:1:2:aaaa::1"));
    expect(ipLimitKey("2001:db8::1", 128)).toBe("2001:db8:0:0:0:0:0:1");
    // IPv4, IPv4-mapped IPv6 included, is never cut.
    expect(ipLimitKey("::ffff:198.51.100.7", 48)).toBe("198.51.100.7");
    for (const bad of [31, 129, 47.5, Number.NaN]) expect(() => ipLimitKey("2001:db8::1", bad)).toThrow(ConfigError);
  });

  it("believes only trusted hops, by count or by proxy address", async () => {
    const check = async (options: ClientIpOptions | undefined, proxy: boolean, xff: string | undefined) => {
      const served = await serve((app) => {
        app.proxy = proxy;
        if (options) app.use(clientIp(options));
        app.use((ctx) => {
          ctx.body = requestIp(ctx) ?? "none";
        });
      });
      try {
        return (await served.get("/", xff)).text;
      } finally {
        await served.close();
      }
    };
    // Defaults: the socket, whatever the header says.
    expect(await check({}, false, "6.6.6.6")).toBe("127.0.0.1");
    expect(await check(undefined, false, "6.6.6.6")).toBe("127.0.0.1");
    // The documented `app.proxy = true` alone: one hop, the entry the proxy appended, not the client's leftmost.
    expect(await check(undefined, true, "6.6.6.6, 203.0.113.5")).toBe("203.0.113.5");
    expect(await check({ trustedHops: 2 }, false, "6.6.6.6, 203.0.113.5, 10.0.0.2")).toBe("203.0.113.5");
    // Fewer hops than configured: the request skipped the proxies, so the header is not believed.
    expect(await check({ trustedHops: 2 }, false, "6.6.6.6")).toBe("127.0.0.1");
    expect(await check({ trustedProxies: ["127.0.0.1"] }, false, "6.6.6.6, 203.0.113.5")).toBe("203.0.113.5");
    expect(await check({ trustedProxies: ["127.0.0.0/8", "203.0.113.0/24"] }, false, "6.6.6.6, 203.0.113.5")).toBe("6.6.6.6");
    // Junk where the client should be yields no address, never the junk.
    expect(await check(undefined, true, "x".repeat(8000))).toBe("none");
    expect(() => clientIp({ trustedProxies: ["10.0.0.0/99"] })).toThrow(ConfigError);
  });
});

describeEachDatabase("client IPs in limits and lockouts", (fixture) => {
  let app: TestApp;
  beforeAll(async () => {
    await migrateToLatest(fixture.database.db, [authMigrations, limitMigrations]);
    app = await startTestApp(fixture); // app.proxy = true, as the auth docs set it
  });
  afterAll(() => app?.close());

  it("holds a 5-per-window IP limit against spoofed X-Forwarded-For, /64 rotation and IPv4-mapped twins", async () => {
    const store = createKyselyRateLimitStore(fixture.database.db);
    const served = await serve((koa) => {
      koa.proxy = true;
      koa.use(rateLimit({ store, limit: 5, windowMs: 60_000, by: "ip", name: `ip${Math.random().toString(36).slice(2, 8)}` }));
      koa.use((ctx) => {
        ctx.body = "ok";
      });
    });
    try {
      const run = async (xff: (i: number) => string) => {
        let passed = 0;
        for (let i = 0; i < 20; i++) if ((await served.get("/", xff(i))).status === 200) passed += 1;
        return passed;
      };
      expect(await run((i) => `198.18.0.${i}, 203.0.113.77`)).toBe(5);
      expect(await run((i) => `2001:db8:77:1::${(i + 1).toString(16)}`)).toBe(5);
      expect(await run((i) => (i % 2 ? "::ffff:198.51.100.77" : "198.51.100.77"))).toBe(5);
    } finally {
      await served.close();
    }
  });

  it("counts logins and requests rotating through a /48 as one client when told IPv6 clients hold /48s", async () => {
    const wide = await startTestApp(fixture, { loginLimiter: { ipv6PrefixLength: 48 } });
    const store = createKyselyRateLimitStore(fixture.database.db);
    const served = await serve((koa) => {
      koa.proxy = true;
      koa.use(rateLimit({ store, limit: 5, windowMs: 60_000, by: "ip", ipv6PrefixLength: 48, name: `ip${Math.random().toString(36).slice(2, 8)}` }));
      koa.use((ctx) => {
        ctx.body = "ok";
      });
    });
    try {
      // Every attempt from another /64 of the same /48.
      const from = (i: number) => `2001:db8:ab:${(i + 1).toString(16)}::1`;
      let refused = 0;
      for (let i = 0; i < 40; i++) {
        const res = await wide.request("POST", "/auth/login", { body: { email: `wide-${i}@example.com`, password: "password123456" }, headers: { "x-forwarded-for": from(i) } });
        if (res.status === 429) refused += 1;
        else expect(res.status).toBe(401);
      }
      expect(refused).toBeGreaterThanOrEqual(19);
      let passed = 0;
      for (let i = 0; i < 20; i++) if ((await served.get("/", from(i))).status === 200) passed += 1;
      expect(passed).toBe(5);
    } finally {
      await served.close();
      await wide.close();
    }
  });

  it("locks out credential stuffing from one /64 and stores only real addresses on sessions", async () => {
    let refused = 0;
    for (let i = 0; i < 40; i++) {
      const res = await app.request("POST", "/auth/login", {
        body: { email: `stuffed-${i}@example.com`, password: "password123456" },
        headers: { "x-forwarded-for": `2001:db8:aa:bb:${(i + 1).toString(16)}::1` },
      });
      if (res.status === 429) refused += 1;
      else expect(res.status).toBe(401);
    }
    expect(refused).toBeGreaterThanOrEqual(19);

    const signup = await app.request("POST", "/auth/signup", {
      body: { email: `junk-ip-${Date.now()}@example.com`, password: "long enough password" },
      headers: { "x-forwarded-for": "z".repeat(8000) },
    });
    expect(signup.status).toBe(201);
    const session = await fixture.database.db.selectFrom("auth_sessions").select("ip").where("id", "=", signup.body.sessionId).executeTakeFirstOrThrow();
    expect(session.ip).toBeNull();
  });
});
