import { createServer, type Server } from "node:http";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { provisionCheckout, runFolders } from "./provision.js";

/**
 * A tenant names the repository a run clones. The server must not become a client of its own
 * network for them: loopback services, the cloud metadata address, private ranges.
 */
describe("cloning a run's repository by URL", () => {
  let server: Server;
  let port: number;
  let v6: Server | undefined;
  let v6Port = 0;
  const hits: string[] = [];
  let base: string;

  beforeAll(async () => {
    const handler = (req: { url?: string }, res: { writeHead(s: number): void; end(): void }) => {
      hits.push(req.url ?? "");
      res.writeHead(404);
      res.end();
    };
    server = createServer(handler);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    port = (server.address() as { port: number }).port;
    v6 = createServer(handler);
    await new Promise<void>((resolve) => {
      v6!.once("error", () => {
        v6 = undefined;
        resolve();
      });
      v6!.listen(0, "::1", resolve);
    });
    if (v6) v6Port = (v6.address() as { port: number }).port;
    base = await mkdtemp(join(tmpdir(), "keen-provision-"));
  });
  afterAll(async () => {
    server.close();
    v6?.close();
    await rm(base, { recursive: true, force: true });
  });

  const hosts = () => [
    `http://127.0.0.1:${port}/a.git`,
    `http://localhost:${port}/a.git`,
    `http://127.1:${port}/a.git`,
    `http://2130706433:${port}/a.git`,
    `http://0x7f000001:${port}/a.git`,
    `http://[::ffff:127.0.0.1]:${port}/a.git`,
    `http://0.0.0.0:${port}/a.git`,
    ...(v6 ? [`http://[::1]:${v6Port}/a.git`] : []),
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/a.git",
    "http://192.168.1.1/a.git",
    "http://100.64.0.1/a.git",
    "https://[fd00::1]/a.git",
    "https://[fe80::1]/a.git",
    "https://[64:ff9b::7f00:1]/a.git",
    "https://[::]/a.git",
  ];

  it("refuses hosts on loopback, link-local and private addresses before git connects", async () => {
    let n = 0;
    for (const url of hosts()) {
      const folders = runFolders(base, "user1", `run${++n}`);
      const started = provisionCheckout(folders, { url }, false);
      await expect(started, url).rejects.toMatchObject({ code: "repository_unavailable" });
      await expect(started).rejects.toThrow(/address|resolve/i);
    }
    expect(hits).toEqual([]);
  });
});
