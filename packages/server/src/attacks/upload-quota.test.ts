import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { measureDirectory } from "@keen/gateway-kit";
import { execa } from "execa";
import { beforeAll, expect, it } from "vitest";
import { describeEachDatabase, signup, useTestServer, type Account } from "../testing/harness.js";

const LIMIT = 400_000;

/**
 * `--max-workspace-bytes` is the disk one user's uploads and workspaces may use. An archive of a
 * few hundred bytes can unpack to far more (within the bomb ratio's floor), and uploads sent at
 * once were each measured before any of them was unpacked.
 */
describeEachDatabase("attack: uploads against the user's disk quota", (database) => {
  const t = useTestServer(() => ({ ...database.settings, workers: 0, modelBaseUrl: "http://127.0.0.1:9", maxWorkspaceBytes: LIMIT, rateLimit: 10_000 }));
  let archive: Buffer;

  beforeAll(async () => {
    // 250 000 zero bytes: a .tar.gz of a few hundred bytes.
    const dir = await mkdtemp(join(tmpdir(), "keen-quota-"));
    await writeFile(join(dir, "zeros.bin"), Buffer.alloc(250_000));
    archive = Buffer.from((await execa("tar", ["-cz", "-C", dir, "zeros.bin"], { encoding: "buffer" })).stdout as unknown as Uint8Array);
    expect(archive.length).toBeLessThan(2_000);
  });

  const upload = async (user: Account) => {
    const res = await fetch(`${t.url}/v1/uploads`, { method: "POST", headers: { ...user.headers, "content-type": "application/gzip" }, body: archive });
    return { status: res.status, body: (await res.json()) as { id?: string; error?: { code: string; details?: Record<string, unknown> } } };
  };
  const used = async (user: Account) => (await measureDirectory(join(t.server.config.workspacesDir, user.userId)).catch(() => ({ bytes: 0 }))).bytes;

  it("an upload whose unpacked size does not fit is 422 quota_exceeded, however small it was sent", async () => {
    const user = await signup(t.url);
    expect((await upload(user)).status).toBe(201);
    const before = await used(user);
    const second = await upload(user);
    expect(second.status).toBe(422);
    expect(second.body.error).toMatchObject({ code: "quota_exceeded", details: { quota: "workspaceBytes", limit: LIMIT } });
    expect(await used(user)).toBe(before);
    expect(before).toBeLessThanOrEqual(LIMIT);
  });

  it("eight uploads at once: only what fits is unpacked, the rest are refused and leave nothing", async () => {
    const user = await signup(t.url);
    const results = await Promise.all(Array.from({ length: 8 }, () => upload(user)));
    expect(results.filter((r) => r.status === 201)).toHaveLength(1);
    for (const refused of results.filter((r) => r.status !== 201)) expect(refused.body.error?.code).toBe("quota_exceeded");
    expect(await used(user)).toBeLessThanOrEqual(LIMIT);
    // Another user's uploads are measured on their own.
    const other = await signup(t.url);
    expect((await upload(other)).status).toBe(201);
  });
});
