import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, readlink, rm, writeFile } from "node:fs/promises";
import { request, type IncomingMessage } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MessagesServer } from "@keen/agent-core/testing";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ADMIN_EMAIL, api, createTestRepo, eventually, readSse, signup, useTestServer, type Account } from "../testing/harness.js";
import { scriptedModel } from "../testing/model.js";

/** Processes (git and its pack-objects) working in `dir`, found by their working directory. */
async function processesIn(dir: string): Promise<number[]> {
  const found: number[] = [];
  for (const pid of await readdir("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => "");
    if (cwd === dir || cwd.startsWith(`${dir}/`)) found.push(Number(pid));
  }
  return found;
}

/**
 * A run's archive of a repository larger than any buffer between git and the client, fetched by
 * a client that stalls and then hangs up: the server must not hold the whole bundle, and must not
 * leave git running (or a temporary file behind) for a client that is gone.
 */
describe("attack: archive downloads", () => {
  // Incompressible, so the bundle is as large as its content: far past pipe and socket buffers.
  const big = randomBytes(18 * 1024 * 1024).toString("base64");
  let model: MessagesServer;
  let scratch: string;
  const tmpBefore = process.env.TMPDIR;
  beforeAll(async () => {
    // Everything this process puts in the temporary directory (the server's data dir, the
    // repository, and whatever the archive route might write) lands here, and only here.
    scratch = await mkdtemp(join(tmpdir(), "keen-archive-attack-"));
    process.env.TMPDIR = scratch;
    model = await scriptedModel();
  });
  afterAll(async () => {
    await model.close();
    if (tmpBefore === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = tmpBefore;
    await rm(scratch, { recursive: true, force: true });
  });
  const t = useTestServer(() => ({ modelBaseUrl: model.url, localMode: true, maxDownloadsPerUser: 2, downloadStallSeconds: 2 }));
  let owner: Account;
  let runId: string;
  let checkout: string;

  beforeAll(async () => {
    owner = await signup(t.url);
    const admin = await signup(t.url, ADMIN_EMAIL);
    expect((await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: owner.teamId, amount: 100_000_000, idempotencyKey: `g-${owner.teamId}` } })).status).toBe(201);
    const repo = await createTestRepo({ "README.md": "# app\n", "big.txt": big });
    const created = await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "Write the notes file", repo: { path: repo } } });
    expect(created.status).toBe(202);
    runId = created.body.id;
    const end = await readSse(`${t.url}/v1/runs/${runId}/events`, owner.headers, (f) => f.event === "end");
    expect(JSON.parse(end.frames.at(-1)!.data).status).toBe("succeeded");
    checkout = join(t.server.config.workspacesDir, owner.userId, runId, "checkout");
  }, 180_000);

  it("streams the bundle from a live git, and a client that hangs up mid-download takes git and every temporary file with it", async () => {
    const tmpListing = (await readdir(scratch)).sort();
    expect(await processesIn(checkout)).toEqual([]);
    const { res, first } = await new Promise<{ res: IncomingMessage; first: Buffer }>((resolve, reject) => {
      const req = request(`${t.url}/v1/runs/${runId}/archive`, { headers: owner.headers }, (res) => {
        res.once("data", (chunk: Buffer) => {
          // Read one chunk, then stop reading: the client stalls.
          res.pause();
          resolve({ res, first: chunk });
        });
      });
      req.on("error", reject);
      req.end();
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers["content-type"]).toContain("application/x-git-bundle");
    expect(first.subarray(0, 16).toString()).toMatch(/^# v[23] git bundle/);
    // The first bytes reached the client while git is still producing the rest (held back by
    // the stalled client), so the server never had the whole bundle in hand.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect((await processesIn(checkout)).length).toBeGreaterThan(0);

    res.socket.destroy();
    await eventually(async () => (await processesIn(checkout)).length === 0, 10_000, "git to end with the client");
    expect((await readdir(scratch)).sort()).toEqual(tmpListing);
    // The server is none the worse: the next request is answered.
    expect((await api(t.url, `/v1/runs/${runId}`, { headers: owner.headers })).status).toBe(200);
  });

  /** Starts a download, reads its first chunk and stops reading: the client stalls. */
  const stalledDownload = (path: string) =>
    new Promise<IncomingMessage>((resolve, reject) => {
      const req = request(`${t.url}${path}`, { headers: owner.headers }, (res) => {
        if (res.statusCode !== 200) return resolve(res);
        res.once("data", () => {
          res.pause();
          resolve(res);
        });
      });
      req.on("error", reject);
      req.end();
    });

  it("a client that stops reading but stays connected is cut off after --download-stall-seconds, and git ends with it", async () => {
    const res = await stalledDownload(`/v1/runs/${runId}/archive`);
    expect(res.statusCode).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect((await processesIn(checkout)).length).toBeGreaterThan(0);
    // The client never hangs up: the server ends the download itself.
    await eventually(async () => (await processesIn(checkout)).length === 0, 15_000, "git to end with the stalled download");
    // Reading again, the client finds the connection cut: an incomplete response, not one that never ends.
    const closed = new Promise<void>((resolve) => res.once("close", () => resolve()));
    res.on("error", () => {});
    res.resume();
    await closed;
    expect(res.complete).toBe(false);
  });

  it("one user holds at most --max-downloads-per-user downloads at once: the next is 429 too_many_downloads, and a slot comes back when a download ends", async () => {
    const held = [await stalledDownload(`/v1/runs/${runId}/archive`), await stalledDownload(`/v1/runs/${runId}/archive`)];
    expect(held.map((res) => res.statusCode)).toEqual([200, 200]);
    const refused = await api(t.url, `/v1/runs/${runId}/diff`, { headers: owner.headers });
    expect(refused.status).toBe(429);
    expect(refused.body.error).toMatchObject({ code: "too_many_downloads", details: { limit: 2, scope: "user" } });
    // One hangs up, the other stalls out: both slots come back.
    held[0]!.socket.destroy();
    await eventually(async () => (await processesIn(checkout)).length === 0, 15_000, "both downloads to end");
    await eventually(async () => (await api(t.url, `/v1/runs/${runId}/diff`, { headers: owner.headers })).status === 200, 10_000, "a slot to come back");
    const again = await fetch(`${t.url}/v1/runs/${runId}/archive`, { headers: owner.headers });
    expect(again.status).toBe(200);
    expect((await again.arrayBuffer()).byteLength).toBeGreaterThan(18 * 1024 * 1024);
  });

  it("a complete download is a bundle git verifies, holding the run's branch with every file", async () => {
    const run = await api(t.url, `/v1/runs/${runId}`, { headers: owner.headers });
    const res = await fetch(`${t.url}/v1/runs/${runId}/archive`, { headers: owner.headers });
    expect(res.status).toBe(200);
    const dir = await mkdtemp(join(scratch, "download-"));
    const file = join(dir, "run.bundle");
    await writeFile(file, Buffer.from(await res.arrayBuffer()));
    await execa("git", ["init", "-q", join(dir, "verify")]);
    const verified = await execa("git", ["bundle", "verify", file], { cwd: join(dir, "verify"), reject: false });
    expect(verified.exitCode, verified.stderr).toBe(0);
    await execa("git", ["clone", "-q", "-b", run.body.branch, file, join(dir, "clone")]);
    expect((await execa("git", ["rev-parse", "HEAD"], { cwd: join(dir, "clone") })).stdout.trim()).toBe(run.body.headCommit);
    const sha = (text: string | Buffer) => createHash("sha256").update(text).digest("hex");
    expect(sha(await readFile(join(dir, "clone", "big.txt")))).toBe(sha(big));
    expect(await readFile(join(dir, "clone", "NOTES.md"), "utf8")).toContain("written by the agent");
    expect(await processesIn(checkout)).toEqual([]);
  });
});
