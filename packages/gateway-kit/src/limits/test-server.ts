// Test support (not exported): a Koa app behind errorHandler on an ephemeral loopback port.
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import Koa from "koa";
import { errorHandler } from "../http-error.js";
import type { Principal } from "../principal.js";

export interface Served {
  url: string;
  fetch(path: string, init?: RequestInit & { principal?: Partial<Principal> }): Promise<{ status: number; headers: Headers; body: any }>;
  close(): Promise<void>;
}

/**
 * Serves `app` (with errorHandler in front). A request can carry a test principal in the
 * `x-test-principal` header (JSON), which a tiny middleware puts on `ctx.state.principal`.
 */
export async function serve(mount: (app: Koa) => void): Promise<Served> {
  const app = new Koa();
  app.proxy = true;
  app.use(errorHandler());
  app.use(async (ctx, next) => {
    const raw = ctx.get("x-test-principal");
    if (raw) ctx.state.principal = { via: "jwt", scopes: [], ...JSON.parse(raw) } as Principal;
    await next();
  });
  mount(app);
  const server = createServer(app.callback());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    async fetch(path, init = {}) {
      const { principal, ...rest } = init;
      const headers = new Headers(rest.headers);
      if (principal) headers.set("x-test-principal", JSON.stringify(principal));
      const response = await fetch(url + path, { ...rest, headers });
      const text = await response.text();
      let body: unknown = text;
      try {
        body = text ? JSON.parse(text) : undefined;
      } catch {
        // not JSON
      }
      return { status: response.status, headers: response.headers, body };
    },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((e) => (e ? reject(e) : resolve()));
      }),
  };
}
