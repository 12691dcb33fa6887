import { randomBytes } from "node:crypto";
import type { Kysely } from "kysely";
import { describe, expect, it } from "vitest";
import { api, signup, useTestServer } from "../testing/harness.js";


/**
 * The server trusts no proxy, so a client's address is its socket's; the login limiter counts an
 * IPv6 client by its prefix (`--ipv6-limit-prefix`, default 64), an IPv4-mapped one by its IPv4
 * address. Served dual-stack, a request over IPv4 arrives as `::ffff:127.0.0.1` and one over
 * IPv6 from `::1`: the counters they leave show how each was keyed, for a wrong login and for a
 * wrong password on a step-up route alike.
 */
describe("attack: rotating IPv6 addresses past the per-IP login limit", () => {
  const t = useTestServer(() => ({ host: "::", workers: 0, ipv6LimitPrefix: 48 }));
  const db = () => t.server.database.db as Kysely<any>;
  const port = () => new URL(t.url.replace("[::]", "127.0.0.1").replace("://::", "://127.0.0.1")).port;
  const ipKeys = async () => (await db().selectFrom("login_attempts").select("key").where("key", "like", "ip:%").execute()).map((r) => r.key as string).sort();

  it("counts a dual-stack IPv4 client by its IPv4 address and an IPv6 client by its /48", async () => {
    const v4 = `http://127.0.0.1:${port()}`;
    const v6 = `http://[::1]:${port()}`;
    const login = (base: string) => api(base, "/v1/auth/login", { body: { email: `nobody-${randomBytes(4).toString("hex")}@keen.test`, password: "not the password" } });
    expect((await login(v4)).status).toBe(401);
    expect((await login(v6)).status).toBe(401);
    expect(await ipKeys()).toEqual(["ip:0:0:0::/48", "ip:127.0.0.1"]);

    // A wrong password on a step-up route goes through the same limiter, under the same key.
    const user = await signup(v6);
    const before = await db().selectFrom("login_attempts").select("failures").where("key", "=", "ip:0:0:0::/48").executeTakeFirstOrThrow();
    const wrong = await api(v6, "/v1/me", { method: "DELETE", headers: user.headers, body: { password: "a wrong guess" } });
    expect(wrong.status).toBe(403);
    const after = await db().selectFrom("login_attempts").select("failures").where("key", "=", "ip:0:0:0::/48").executeTakeFirstOrThrow();
    expect(Number(after.failures)).toBe(Number(before.failures) + 1);
    expect(await ipKeys()).toEqual(["ip:0:0:0::/48", "ip:127.0.0.1"]);
  });
});
