import { Writable } from "node:stream";
import { authMigrations, migrationTableName } from "@keen/gateway-kit";
import { Validator } from "@seriousme/openapi-schema-validator";
import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { api, describeEachDatabase, signup, startTestServer, useTestServer } from "./testing/harness.js";

describeEachDatabase("server foundation", (database) => {
  const t = useTestServer(() => database.settings);

  it("answers healthz, readyz and metrics", async () => {
    expect((await api(t.url, "/healthz")).body).toEqual({ status: "ok" });
    expect((await api(t.url, "/readyz")).status).toBe(200);
    const metrics = await api<string>(t.url, "/metrics");
    expect(metrics.status).toBe(200);
    expect(metrics.body).toContain("keen_http_request_duration_seconds");
    expect(metrics.body).toContain("keen_queue_depth");
    expect(metrics.body).toContain("keen_runs_active");
  });

  it("keeps its migrations in its own table beside gateway-kit's", async () => {
    const db = t.server.database.db;
    const own = await sql<{ name: string }>`select name from keen_server_migrations order by name`.execute(db);
    expect(own.rows.map((r) => r.name)).toEqual(["server_0001_runs", "server_0002_uploads", "server_0003_resume", "server_0004_team_invites", "server_0005_webhooks"]);
    const kit = await sql<{ name: string }>`select name from ${sql.table(migrationTableName(authMigrations.module))}`.execute(db);
    expect(kit.rows.some((r) => r.name.startsWith("server_"))).toBe(false);
    expect(kit.rows.length).toBeGreaterThan(0);
  });

  it("puts a request id in every error body and header, keeping a well-formed incoming one", async () => {
    const missing = await api(t.url, "/v1/runs");
    expect(missing.status).toBe(401);
    expect(missing.body.error.code).toBe("unauthenticated");
    expect(missing.body.error.requestId).toBe(missing.headers.get("x-request-id"));
    const kept = await api(t.url, "/v1/runs", { headers: { "x-request-id": "trace-123" } });
    expect(kept.body.error.requestId).toBe("trace-123");
    // A request id that could forge log lines is replaced, not echoed.
    const forged = await api(t.url, "/v1/runs", { headers: { "x-request-id": "a b {\"level\":60}" } });
    expect(forged.body.error.requestId).not.toContain(" ");
    // gateway-kit's auth routes answer through their own handler; the id is stamped on theirs too.
    const badSignup = await api(t.url, "/v1/auth/signup", { body: { email: "nope" } });
    expect(badSignup.status).toBe(400);
    expect(badSignup.body.error.requestId).toBe(badSignup.headers.get("x-request-id"));
  });

  it("signs up, shows /v1/me, and authenticates with an API key", async () => {
    const account = await signup(t.url);
    const me = await api(t.url, "/v1/me", { headers: account.headers });
    expect(me.status).toBe(200);
    expect(me.body.user.id).toBe(account.userId);
    expect(me.body.teamId).toBe(account.teamId);
    const key = await api(t.url, "/v1/auth/api-keys", { headers: account.headers, body: { name: "ci", scopes: ["sessions:read"], password: "correct horse battery staple" } });
    expect(key.status).toBe(201);
    const viaKey = await api(t.url, "/v1/me", { headers: { "x-api-key": key.body.key ?? key.body.secret } });
    expect(viaKey.status).toBe(200);
    expect(viaKey.body.via).toBe("api_key");
    expect(viaKey.body.scopes).toEqual(["sessions:read"]);
    // A read-only key cannot start runs.
    const denied = await api(t.url, "/v1/runs", { headers: { "x-api-key": key.body.key ?? key.body.secret }, body: { vision: "x", repo: { url: "https://example.com/a.git" } } });
    expect(denied.status).toBe(403);
  });

  it("refuses a local path from a non-admin outside local mode, holding nothing", async () => {
    const account = await signup(t.url);
    const res = await api(t.url, "/v1/runs", { headers: account.headers, body: { vision: "Add notes", repo: { path: "/tmp" } } });
    expect(res.status).toBe(403);
    expect((await api(t.url, "/v1/credits", { headers: account.headers })).body.balance).toBe(0);
  });

  it("serves a valid OpenAPI 3.1 document that lists exactly the mounted /v1 routes, gateway-kit's auth routes included", async () => {
    const res = await api(t.url, "/v1/openapi.json");
    expect(res.status).toBe(200);
    expect(res.body.openapi).toBe("3.1.0");
    const validator = new Validator();
    const verdict = await validator.validate(structuredClone(res.body));
    expect(verdict.errors ?? []).toEqual([]);
    expect(verdict.valid).toBe(true);
    const documented = new Set<string>();
    for (const [path, ops] of Object.entries(res.body.paths as Record<string, Record<string, { parameters?: Array<{ name: string; in: string }> }>>)) {
      for (const [method, op] of Object.entries(ops)) {
        documented.add(`${method.toUpperCase()} ${path}`);
        // Every templated segment is declared as a path parameter (the schema alone does not check it).
        const declared = (op.parameters ?? []).filter((p) => p.in === "path").map((p) => p.name).sort();
        expect(declared, `${method} ${path}`).toEqual([...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]).sort());
      }
    }
    const mounted = new Set<string>();
    for (const router of [t.server.api, ...t.server.publicRouters]) {
      for (const layer of router.stack) {
        for (const method of layer.methods) if (method !== "HEAD") mounted.add(`${method} ${String(layer.path).replace(/:([A-Za-z_]+)/g, "{$1}")}`);
      }
    }
    expect([...documented].sort()).toEqual([...mounted].sort());
    expect(mounted).toContain("POST /v1/auth/signup");
    expect(mounted).toContain("POST /v1/billing/webhook");
    const create = res.body.paths["/v1/runs"].post.requestBody.content["application/json"].schema;
    expect(create.required).toEqual(expect.arrayContaining(["vision", "repo"]));
    expect(create.additionalProperties).toBe(false);
    expect(res.body.paths["/v1/auth/login"].post.security).toEqual([]);
    expect(res.body.paths["/v1/billing/webhook"].post.security).toEqual([]);
    expect(res.body.paths["/v1/audit"].get.parameters.map((p: { name: string }) => p.name)).toEqual(expect.arrayContaining(["cursor", "limit", "teamId"]));
  });

  it("keeps billing off without a Stripe key: 503 billing_unavailable, nothing else changes", async () => {
    const account = await signup(t.url);
    expect((await api(t.url, "/v1/billing/packs", { headers: account.headers })).body.enabled).toBe(false);
    const checkout = await api(t.url, "/v1/billing/checkout", { headers: account.headers, body: { packId: "starter" } });
    expect(checkout.status).toBe(503);
    expect(checkout.body.error.code).toBe("billing_unavailable");
    const webhook = await api(t.url, "/v1/billing/webhook", { headers: { "stripe-signature": "t=1,v1=00" }, body: { id: "evt_1" } });
    expect(webhook.status).toBe(503);
    expect((await api(t.url, "/v1/credits", { headers: account.headers })).body.balance).toBe(0);
  });

  it("answers bad bodies with 4xx and the one error shape", async () => {
    const account = await signup(t.url);
    for (const body of ["{", "[]", JSON.stringify({ vision: 5 }), JSON.stringify({ vision: "x", repo: { url: "https://e.com/a" }, extra: 1 })]) {
      const res = await fetch(`${t.url}/v1/runs`, { method: "POST", headers: { ...account.headers, "content-type": "application/json" }, body });
      expect(res.status, body).toBeGreaterThanOrEqual(400);
      expect(res.status, body).toBeLessThan(500);
      const parsed = (await res.json()) as { error: { code: string; requestId: string } };
      expect(parsed.error.code).toBeTruthy();
      expect(parsed.error.requestId).toBeTruthy();
    }
    const huge = await fetch(`${t.url}/v1/runs`, { method: "POST", headers: { ...account.headers, "content-type": "application/json" }, body: JSON.stringify({ vision: "x".repeat(400_000) }) });
    expect(huge.status).toBe(413);
  });
});

describe("server logs", () => {
  it("writes structured lines that carry the request id", async () => {
    const lines: string[] = [];
    const destination = new Writable({
      write(chunk, _encoding, callback) {
        lines.push(...String(chunk).split("\n").filter(Boolean));
        callback();
      },
    });
    const { createServer } = await import("./server.js");
    const { mkdtemp, rm } = await import("node:fs/promises");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const dataDir = await mkdtemp(join(tmpdir(), "keen-log-"));
    const server = await createServer({ port: 0, dataDir, logLevel: "info" }, { logDestination: destination });
    try {
      const url = await server.listen();
      await fetch(`${url}/v1/me`, { headers: { "x-request-id": "req-log-1" } });
      const line = lines.map((l) => JSON.parse(l)).find((l) => l.requestId === "req-log-1");
      expect(line).toMatchObject({ requestId: "req-log-1", status: 401, method: "GET" });
    } finally {
      await server.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("is ready on an existing data dir", async () => {
    const first = await startTestServer();
    await first.server.close();
    const started = performance.now();
    const { createServer } = await import("./server.js");
    const again = await createServer({ port: 0, dataDir: first.dataDir, logLevel: "silent" });
    const elapsed = performance.now() - started;
    await again.close();
    // Generous bound (the issue asks for 2 s on this machine); guards against re-running initdb.
    expect(elapsed).toBeLessThan(10_000);
  });
});
