import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Router } from "@koa/router";
import Koa from "koa";
import { expect, it } from "vitest";
import { errorHandler } from "../http-error.js";
import { jsonNotFound, securityHeaders } from "./security-headers.js";

it("sends security headers on answers and errors, and JSON 404s for unmatched routes", async () => {
  const app = new Koa();
  app.use(securityHeaders());
  app.use(errorHandler());
  app.use(jsonNotFound());
  const router = new Router();
  router.get("/ok", (ctx) => {
    ctx.body = { ok: true };
  });
  app.use(router.routes()).use(router.allowedMethods());
  const server = createServer(app.callback());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const ok = await fetch(`${base}/ok`);
    const missing = await fetch(`${base}/nowhere`);
    for (const res of [ok, missing]) {
      expect(res.headers.get("x-content-type-options")).toBe("nosniff");
      expect(res.headers.get("x-frame-options")).toBe("DENY");
      expect(res.headers.get("referrer-policy")).toBe("no-referrer");
      expect(res.headers.get("content-security-policy")).toContain("default-src 'none'");
      // Plain HTTP: HSTS would be meaningless and is left out.
      expect(res.headers.get("strict-transport-security")).toBeNull();
    }
    expect(missing.status).toBe(404);
    expect(missing.headers.get("content-type")).toMatch(/application\/json/);
    expect(await missing.json()).toEqual({ error: { code: "not_found", message: "No route for GET /nowhere" } });
    // A wrong method on a known path still gets the router's 405, not a 404.
    expect((await fetch(`${base}/ok`, { method: "DELETE" })).status).toBe(405);
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});
