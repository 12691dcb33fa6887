import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import { enforceDirectoryQuotas, measureDirectory, quota, QuotaExceededError } from "./quota.js";
import { serve, type Served } from "./test-server.js";
import { errorStatus } from "../http-error.js";

/** A domain error as the HTTP edge answers it: its fields plus the status from the code table. */
const atEdge = (error: unknown) => ({ ...(error as object), message: (error as Error).message, status: errorStatus(error) });

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "keen-quota-"));
  await mkdir(join(dir, "repo/src/deep"), { recursive: true });
  await mkdir(join(dir, "repo/.git"), { recursive: true });
  await writeFile(join(dir, "repo/README.md"), "x".repeat(100));
  await writeFile(join(dir, "repo/src/a.ts"), "y".repeat(1000));
  await writeFile(join(dir, "repo/src/deep/b.ts"), "z".repeat(24));
  await writeFile(join(dir, "repo/.git/HEAD"), "ref: refs/heads/main\n");
  await writeFile(join(dir, "outside.bin"), Buffer.alloc(50_000));
  // A symlink to a big file outside is counted as one entry and never followed.
  await symlink(join(dir, "outside.bin"), join(dir, "repo/src/link"));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe("measureDirectory", () => {
  it("totals files and bytes without following symlinks, skipping excluded folders", async () => {
    expect(await measureDirectory(join(dir, "repo"), { exclude: [".git"] })).toEqual({ bytes: 1124, files: 4, partial: false });
    expect(await measureDirectory(join(dir, "repo"))).toEqual({ bytes: 1124 + 21, files: 5, partial: false });
    const allocated = await measureDirectory(join(dir, "repo"), { allocated: true });
    expect(allocated.bytes % 512).toBe(0);
    expect(allocated.bytes).toBeGreaterThan(0);
    expect((await measureDirectory(join(dir, "repo"), { stopAbove: { files: 1 } })).partial).toBe(true);
  });

  it("refuses a repository over its size or file-count quota with 422 naming the quota", async () => {
    await expect(enforceDirectoryQuotas(join(dir, "repo"), { repositoryBytes: 2000, fileCount: 10 })).resolves.toMatchObject({ files: 5 });
    const files = await enforceDirectoryQuotas(join(dir, "repo"), { fileCount: 3 }, { exclude: [".git"] }).catch((e) => e);
    expect(files).toBeInstanceOf(QuotaExceededError);
    expect(atEdge(files)).toMatchObject({ status: 422, code: "quota_exceeded", details: { quota: "fileCount", limit: 3, actual: 4 } });
    expect(files.message).toBe("The file count quota is 3 files; this would need at least 4 files");
    const bytes = await enforceDirectoryQuotas(join(dir, "repo"), { repositoryBytes: 1000 }).catch((e) => e);
    expect(bytes.details).toMatchObject({ quota: "repositoryBytes", limit: 1000 });
  });
});

describe("quota middleware", () => {
  let app: Served;
  let workspaceBytes = 0;
  beforeAll(async () => {
    app = await serve((koa) => {
      koa.use(
        quota({
          maxUploadBytes: 64 * 1024,
          limits: { workspaceBytes: 1_000_000, fileCount: 100 },
          usage: () => ({ workspaceBytes }),
        }),
      );
      koa.use(async (ctx) => {
        let received = 0;
        for await (const chunk of ctx.state.upload!) received += (chunk as Buffer).length;
        ctx.body = { received };
      });
    });
  });
  afterAll(() => app.close());

  const stream = (chunks: number, size: number) =>
    new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < chunks; i++) controller.enqueue(new Uint8Array(size));
        controller.close();
      },
    });

  it("refuses a declared Content-Length over the limit with 413 before reading the body", async () => {
    const res = await app.fetch("/", { method: "POST", body: Buffer.alloc(64 * 1024 + 1) });
    expect(res.status).toBe(413);
    expect(res.body.error).toEqual({
      code: "upload_too_large",
      message: "The upload size quota is 65536 bytes; this would need 65537 bytes",
      details: { quota: "uploadBytes", limit: 65536, actual: 65537 },
    });
    const ok = await app.fetch("/", { method: "POST", body: Buffer.alloc(64 * 1024) });
    expect(ok.body).toEqual({ received: 65536 });
  });

  it("counts a streamed (chunked) body and stops it with 413 once it passes the limit", async () => {
    const small = await app.fetch("/", { method: "POST", body: stream(4, 8192), duplex: "half" } as RequestInit);
    expect(small.body).toEqual({ received: 32768 });
    const big = await app.fetch("/", { method: "POST", body: stream(20, 8192), duplex: "half" } as RequestInit);
    expect(big.status).toBe(413);
    expect(big.body.error.details).toMatchObject({ quota: "uploadBytes", limit: 65536 });
    expect(big.body.error.details.actual).toBeGreaterThan(65536);
  });

  it("refuses work that would take the workspace over its disk quota with 422", async () => {
    workspaceBytes = 1_000_001;
    const res = await app.fetch("/", { method: "POST", body: "x" });
    expect(res.status).toBe(422);
    expect(res.body.error).toMatchObject({ code: "quota_exceeded", details: { quota: "workspaceBytes", limit: 1_000_000, actual: 1_000_001 } });
    workspaceBytes = 0;
  });

  it("leaves ctx.req whole for a body parser when the route does not read ctx.state.upload", async () => {
    const parsed = await serve((koa) => {
      koa.use(quota({ maxUploadBytes: 1024 * 1024 }));
      koa.use(async (ctx) => {
        let text = "";
        for await (const chunk of ctx.req) text += String(chunk);
        const body = JSON.parse(text) as { vision: string };
        ctx.body = { length: body.vision.length };
      });
    });
    try {
      // Large enough to fill stream buffers several times over.
      const res = await parsed.fetch("/", { method: "POST", body: JSON.stringify({ vision: "v".repeat(300_000) }) });
      expect(res.body).toEqual({ length: 300_000 });
    } finally {
      await parsed.close();
    }
  });

  it("validates its options at creation", () => {
    expect(() => quota({ maxUploadBytes: -1 })).toThrow(ConfigError);
    expect(() => quota({ limits: { fileCount: 10 } })).toThrow(/usage/);
    expect(() => quota({ limits: { inodes: 1 } as never, usage: () => ({}) })).toThrow(ConfigError);
  });
});
