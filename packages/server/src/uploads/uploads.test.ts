import { mkdir, mkdtemp, readFile, stat, writeFile, chmod } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import type { MessagesServer } from "@keen/agent-core/testing";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ADMIN_EMAIL, api, describeEachDatabase, readSse, signup, useTestServer, type Account } from "../testing/harness.js";
import { scriptedModel } from "../testing/model.js";

async function upload(url: string, headers: Record<string, string>, body: Buffer, type = "application/gzip") {
  const res = await fetch(`${url}/v1/uploads`, { method: "POST", headers: { ...headers, "content-type": type }, body });
  return { status: res.status, body: (await res.json()) as any };
}

/**
 * A project folder whose `.git` carries a hook, an fsmonitor command, an alternates file and a
 * nested `gitdir:` pointer — each would run a command or read outside the upload if the
 * server's git honoured it. The marker file appears if any of them runs.
 */
async function hostileProject(marker: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "keen-upload-src-"));
  await writeFile(join(dir, "README.md"), "# uploaded\n");
  await mkdir(join(dir, "src"));
  await writeFile(join(dir, "src", "main.txt"), "hello\n");
  await execa("git", ["init", "-q", "-b", "main"], { cwd: dir });
  await execa("git", ["-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], { cwd: dir });
  await execa("git", ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"], { cwd: dir });
  const script = `#!/bin/sh\ntouch ${marker}\n`;
  for (const hook of ["pre-commit", "post-checkout", "post-commit", "pre-auto-gc", "reference-transaction"]) {
    await writeFile(join(dir, ".git", "hooks", hook), script);
    await chmod(join(dir, ".git", "hooks", hook), 0o755);
  }
  await writeFile(join(dir, "fsmonitor.sh"), script);
  await chmod(join(dir, "fsmonitor.sh"), 0o755);
  await writeFile(join(dir, ".git", "config"), `[core]\n\tfsmonitor = ${join(dir, "fsmonitor.sh")}\n\thooksPath = .git/hooks\n\tsshCommand = ${marker}\n[filter "x"]\n\tclean = touch ${marker}\n`);
  await writeFile(join(dir, ".gitattributes"), "* filter=x\n");
  await mkdir(join(dir, ".git", "objects", "info"), { recursive: true });
  await writeFile(join(dir, ".git", "objects", "info", "alternates"), "/etc\n");
  await mkdir(join(dir, "vendor"));
  await writeFile(join(dir, "vendor", ".git"), "gitdir: /etc\n");
  await writeFile(join(dir, "vendor", "lib.txt"), "lib\n");
  return dir;
}

describeEachDatabase("uploads", (database) => {
  let model: MessagesServer;
  beforeAll(async () => {
    model = await scriptedModel();
  });
  afterAll(async () => {
    await model.close();
  });
  const t = useTestServer(() => ({ ...database.settings, modelBaseUrl: model.url, maxUploadBytes: 64 * 1024 }));
  let owner: Account;

  beforeAll(async () => {
    owner = await signup(t.url);
    const admin = await signup(t.url, ADMIN_EMAIL);
    const grant = await api(t.url, "/v1/admin/credits/grant", { headers: admin.headers, body: { teamId: owner.teamId, amount: 100_000_000, idempotencyKey: `g-${owner.teamId}` } });
    expect(grant.status).toBe(201);
  });

  it("runs from an uploaded tar.gz; the upload's .git never steers the server's git", async () => {
    const marker = join(await mkdtemp(join(tmpdir(), "keen-marker-")), "ran");
    const project = await hostileProject(marker);
    const tgz = (await execa("tar", ["-cz", "-C", project, "."], { encoding: "buffer" })).stdout as unknown as Buffer;
    const up = await upload(t.url, owner.headers, Buffer.from(tgz));
    expect(up.status, JSON.stringify(up.body)).toBe(201);
    expect(up.body.id).toMatch(/^upl_/);
    expect(up.body.format).toBe("tar.gz");
    expect(up.body.commit).toMatch(/^[0-9a-f]{40}$/);

    const created = await api(t.url, "/v1/runs", { headers: owner.headers, body: { vision: "Write the notes file", repo: { uploadId: up.body.id } } });
    expect(created.status, JSON.stringify(created.body)).toBe(202);
    const runId = created.body.id as string;
    const streamed = await readSse(`${t.url}/v1/runs/${runId}/events`, owner.headers, (f) => f.event === "end");
    expect(JSON.parse(streamed.frames.at(-1)!.data).status).toBe("succeeded");
    const run = await api(t.url, `/v1/runs/${runId}`, { headers: owner.headers });
    expect(run.body.baseCommit).toBe(up.body.commit);
    const diff = await api<string>(t.url, `/v1/runs/${runId}/diff`, { headers: owner.headers });
    expect(diff.body).toContain("+written by the agent");

    // The run's checkout has the uploaded files, and none of the upload's git metadata.
    const checkout = join(t.server.config.workspacesDir, owner.userId, runId, "checkout");
    expect(await readFile(join(checkout, "src", "main.txt"), "utf8")).toBe("hello\n");
    expect(await readFile(join(checkout, "vendor", "lib.txt"), "utf8")).toBe("lib\n");
    await expect(stat(join(checkout, "vendor", ".git"))).rejects.toThrow();
    const config = await readFile(join(checkout, ".git", "config"), "utf8");
    expect(config).not.toContain("fsmonitor");
    await expect(stat(marker)).rejects.toThrow();
  });

  it("accepts zip and plain tar", async () => {
    const dir = await mkdtemp(join(tmpdir(), "keen-upload-zip-"));
    await writeFile(join(dir, "a.txt"), "a\n");
    await execa("zip", ["-q", "-r", join(dir, "..", `${dir.split("/").pop()}.zip`), "a.txt"], { cwd: dir });
    const zip = await readFile(join(dir, "..", `${dir.split("/").pop()}.zip`));
    const z = await upload(t.url, owner.headers, zip, "application/zip");
    expect(z.status, JSON.stringify(z.body)).toBe(201);
    expect(z.body).toMatchObject({ format: "zip", files: 1 });
    const tar = (await execa("tar", ["-c", "-C", dir, "a.txt"], { encoding: "buffer" })).stdout as unknown as Buffer;
    const plain = await upload(t.url, owner.headers, Buffer.from(tar), "application/x-tar");
    expect(plain.status).toBe(201);
    expect(plain.body.format).toBe("tar");
  });

  it("refuses unsafe archives with a 4xx and unpacks nothing", async () => {
    const script = `
import io, sys, tarfile
kind = sys.argv[1]
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as tar:
    def add(name, data=b"x", **kw):
        info = tarfile.TarInfo(name); info.size = len(data)
        for k, v in kw.items(): setattr(info, k, v)
        tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    if kind == "dotdot": add("../escape.txt")
    if kind == "absolute": add("/tmp/abs.txt")
    if kind == "link": add("out", type=tarfile.SYMTYPE, linkname="/etc"); add("out/passwd")
    if kind == "device": add("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
sys.stdout.buffer.write(buf.getvalue())
`;
    for (const kind of ["dotdot", "absolute", "link", "device"]) {
      const body = (await execa("python3", ["-c", script, kind], { encoding: "buffer" })).stdout as unknown as Buffer;
      const res = await upload(t.url, owner.headers, Buffer.from(body), "application/x-tar");
      expect(res.status, kind).toBeGreaterThanOrEqual(400);
      expect(res.status, kind).toBeLessThan(500);
      expect(res.body.error.requestId).toBeTruthy();
    }
    const notArchive = await upload(t.url, owner.headers, Buffer.from("just text"), "text/plain");
    expect(notArchive.status).toBe(415);
    const tooLarge = await upload(t.url, owner.headers, Buffer.alloc(128 * 1024));
    expect(tooLarge.status).toBe(413);
    expect(tooLarge.body.error.code).toBeTruthy();
  });

  it("another tenant cannot start a run from the upload (404)", async () => {
    const dir = await mkdtemp(join(tmpdir(), "keen-upload-x-"));
    await writeFile(join(dir, "a.txt"), "a\n");
    const tar = (await execa("tar", ["-c", "-C", dir, "a.txt"], { encoding: "buffer" })).stdout as unknown as Buffer;
    const mine = await upload(t.url, owner.headers, Buffer.from(tar), "application/x-tar");
    const stranger = await signup(t.url);
    const res = await api(t.url, "/v1/runs", { headers: stranger.headers, body: { vision: "Write notes", repo: { uploadId: mine.body.id } } });
    expect(res.status).toBe(404);
    const noAuth = await upload(t.url, {}, Buffer.from(tar), "application/x-tar");
    expect(noAuth.status).toBe(401);
  });
});
