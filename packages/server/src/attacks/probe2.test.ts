import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { measureDirectory } from "@keen/gateway-kit";
import { it } from "vitest";
import { ADMIN_EMAIL, api, signup, startTestServer } from "../testing/harness.js";

it("probe2", async () => {
  const t = await startTestServer({ workers: 0, modelBaseUrl: "http://127.0.0.1:9", maxRunsPerUser: 100, runReserve: 1_000_000, maxWorkspaceBytes: 300_000, rateLimit: 10000 });
  try {
    const url = t.url;
    const a = await signup(url);
    const admin = await signup(url, ADMIN_EMAIL);
    const grants = await Promise.all(Array.from({ length: 30 }, () => api(url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: a.teamId, amount: 3_000_000, idempotencyKey: "same-key-1" } })));
    console.log("grants", grants.map((g) => g.status).join(","), (await api(url, "/v1/credits", { headers: a.headers })).body);
    const creates = await Promise.all(Array.from({ length: 50 }, (_, i) => api(url, "/v1/runs", { headers: a.headers, body: { vision: `v${i}`, repo: { url: "https://git.example/app.git" } } })));
    const by: Record<number, number> = {};
    for (const c of creates) by[c.status] = (by[c.status] ?? 0) + 1;
    console.log("creates", by, (await api(url, "/v1/credits", { headers: a.headers })).body, (await t.server.ledger.verify()).ok);
    const ok = creates.filter((c) => c.status === 202);
    const cancels = await Promise.all(Array.from({ length: 20 }, () => api(url, `/v1/runs/${ok[0]!.body.id}/cancel`, { method: "POST", headers: a.headers })));
    console.log("cancels", cancels.map((g) => g.status).join(","), (await api(url, "/v1/credits", { headers: a.headers })).body);
    const dels = await Promise.all(Array.from({ length: 20 }, () => api(url, `/v1/runs/${ok[0]!.body.id}`, { method: "DELETE", headers: a.headers })));
    console.log("deletes", dels.map((g) => `${g.status}:${g.body.error?.code ?? ""}`).join(","));

    // disk quota
    const dir = await mkdtemp(join(tmpdir(), "keen-quota-"));
    await writeFile(join(dir, "zeros.bin"), Buffer.alloc(250_000));
    const tgz = Buffer.from((await execa("tar", ["-cz", "-C", dir, "zeros.bin"], { encoding: "buffer" })).stdout as unknown as Buffer);
    console.log("tgz bytes", tgz.length);
    const b = await signup(url);
    const up = () => fetch(`${url}/v1/uploads`, { method: "POST", headers: { ...b.headers, "content-type": "application/gzip" }, body: tgz }).then(async (r) => `${r.status}`);
    console.log("seq uploads", await up(), await up(), await up());
    console.log("used b", (await measureDirectory(join(t.server.config.workspacesDir, b.userId))).bytes);
    const c = await signup(url);
    const upc = () => fetch(`${url}/v1/uploads`, { method: "POST", headers: { ...c.headers, "content-type": "application/gzip" }, body: tgz }).then(async (r) => `${r.status}`);
    console.log("concurrent uploads", (await Promise.all(Array.from({ length: 8 }, upc))).join(","));
    console.log("used c", (await measureDirectory(join(t.server.config.workspacesDir, c.userId))).bytes);
  } finally {
    await t.stop();
  }
}, 180_000);
