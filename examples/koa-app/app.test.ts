import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { openDatabase, type Database } from "@keen/gateway-kit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApp } from "./src/app.js";

describe("example: gateway-kit mounted in an existing Koa app", () => {
  let database: Database;
  let server: Server;
  let base: string;

  beforeAll(async () => {
    database = await openDatabase();
    const app = await createApp({ database, passwordHashing: { memoryCost: 1024, timeCost: 1 } });
    server = createServer(app.callback());
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server?.close(resolve));
    await database?.close();
  });

  async function call(method: string, path: string, token?: string, body?: unknown) {
    const response = await fetch(base + path, {
      method,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body ? { "content-type": "application/json" } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : undefined };
  }

  it("keeps the existing routes and protects the API", async () => {
    expect(await call("GET", "/health")).toEqual({ status: 200, body: { ok: true } });
    const anonymous = await call("GET", "/api/runs");
    expect(anonymous.status).toBe(401);
    expect(anonymous.body.error.code).toBe("unauthenticated");
  });

  it("signs up, works with a JWT and a narrowed API key, and hides other teams' runs", async () => {
    const ada = (await call("POST", "/auth/signup", undefined, { email: "ada@example.com", password: "analytical engine" })).body;
    const created = await call("POST", "/api/runs", ada.accessToken, { vision: "add a README" });
    expect(created.status).toBe(201);

    // Minting a key re-authenticates: a session token alone is not enough.
    const key = await call("POST", "/auth/api-keys", ada.accessToken, { name: "ci", scopes: ["sessions:read"], password: "analytical engine" });
    expect(key.status).toBe(201);
    const listed = await call("GET", "/api/runs", key.body.key);
    expect(listed.body.runs.map((r: { vision: string }) => r.vision)).toEqual(["add a README"]);
    const write = await call("POST", "/api/runs", key.body.key, { vision: "nope" });
    expect(write.status).toBe(403);
    expect(write.body.error.details.missing).toBe("sessions:write");
    expect((await call("GET", "/api/billing", key.body.key)).status).toBe(403);
    expect((await call("GET", "/api/billing", ada.accessToken)).status).toBe(200);

    const bob = (await call("POST", "/auth/signup", undefined, { email: "bob@example.com", password: "difference engine" })).body;
    const peek = await call("GET", `/api/runs/${created.body.id}`, bob.accessToken);
    expect(peek.status).toBe(404);
    expect((await call("GET", `/api/runs/${created.body.id}`, ada.accessToken)).body.vision).toBe("add a README");
    expect((await call("GET", "/api/runs", bob.accessToken)).body.runs).toEqual([]);
  });
});
