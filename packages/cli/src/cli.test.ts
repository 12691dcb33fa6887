import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeenEvent } from "@keen/agent-core";
import { reply, startMessagesServer } from "@keen/agent-core/testing";

/** The CLI runs as a real child process, from source through tsx (which honours tsconfig paths). */
const repoRoot = fileURLToPath(new URL("../../..", import.meta.url));
const entry = fileURLToPath(new URL("./bin.ts", import.meta.url));
const identity = { GIT_AUTHOR_NAME: "t", GIT_AUTHOR_EMAIL: "t@t", GIT_COMMITTER_NAME: "t", GIT_COMMITTER_EMAIL: "t@t" };

function keen(args: string[], env: Record<string, string | undefined> = {}) {
  return execa(process.execPath, ["--import", "tsx", entry, ...args], {
    cwd: repoRoot,
    reject: false,
    env: { ANTHROPIC_API_KEY: undefined, ANTHROPIC_BASE_URL: undefined, ...env },
    extendEnv: true,
    timeout: 60_000,
  });
}

async function gitRepo(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "keen-cli-"));
  await execa("git", ["init", "-q", "-b", "main"], { cwd: dir });
  await writeFile(join(dir, "README.md"), "# sample\n");
  await execa("git", ["add", "-A"], { cwd: dir });
  await execa("git", ["commit", "-qm", "init"], { cwd: dir, env: identity });
  return dir;
}

describe("keen CLI", () => {
  it("prints help and exits 0", async () => {
    const result = await keen(["--help"]);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain("keen run");
  });

  it("refuses an unknown command, a bad flag and a missing vision with one line and exit 2", async () => {
    for (const args of [["frobnicate"], ["run", "x", "--bogus"], ["run", "--repo", "."]]) {
      const result = await keen(args, { ANTHROPIC_API_KEY: "k" });
      expect(result.exitCode, args.join(" ")).toBe(2);
      expect(result.stderr.trim().split("\n")).toHaveLength(1);
      expect(result.stderr).toMatch(/^keen: /);
    }
  });

  it("says clearly when the API key is missing", async () => {
    const result = await keen(["run", "do it", "--repo", "."]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr.trim()).toBe("keen: ANTHROPIC_API_KEY is not set (export it, or try the offline `keen demo`)");
  });

  it("refuses a folder that is not a git repository", async () => {
    const dir = await mkdtemp(join(tmpdir(), "keen-notgit-"));
    const result = await keen(["run", "do it", "--repo", dir], { ANTHROPIC_API_KEY: "k" });
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/not a git repository/i);
    expect(result.stderr.trim().split("\n")).toHaveLength(1);
  });

  describe("against the offline Messages API", () => {
    let server: Awaited<ReturnType<typeof startMessagesServer>>;
    beforeAll(async () => {
      server = await startMessagesServer({
        script: [
          reply.toolUse("write_file", { path: "notes/hello.txt", content: "hello from keen\n" }),
          reply.text("Created notes/hello.txt."),
        ],
      });
    });
    afterAll(() => server.close());

    it("runs an agent, prints NDJSON events and commits the work", async () => {
      const dir = await gitRepo();
      const result = await keen(["run", "Write a hello note", "--repo", dir, "--json"], {
        ANTHROPIC_API_KEY: "test-key",
        ANTHROPIC_BASE_URL: server.url,
      });
      expect(result.stderr).toBe("");
      expect(result.exitCode).toBe(0);
      const events = result.stdout.trim().split("\n").map((line) => KeenEvent.parse(JSON.parse(line)));
      expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i));
      expect(events[0]!.type).toBe("run.started");
      expect(events.at(-1)).toMatchObject({ type: "run.completed", status: "success" });
      expect(events.map((e) => e.type)).toContain("git.commit");
      expect(await readFile(join(dir, "notes/hello.txt"), "utf8")).toBe("hello from keen\n");
      const log = await execa("git", ["log", "-1", "--format=%s%n%b", "--name-only"], { cwd: dir });
      expect(log.stdout).toContain("Write a hello note");
      expect(log.stdout).toContain("notes/hello.txt");
      const headers = server.requests[0]!.headers;
      expect(headers["x-api-key"] ?? headers.authorization).toMatch(/^(Bearer )?test-key$/);
    });
  });

  it("exits 1 with a one-line reason when the model refuses the key", async () => {
    const server = await startMessagesServer({ script: [reply.error(401, "authentication_error", "invalid x-api-key")] });
    try {
      const dir = await gitRepo();
      const result = await keen(["run", "anything", "--repo", dir], { ANTHROPIC_API_KEY: "bad", ANTHROPIC_BASE_URL: server.url });
      expect(result.exitCode).toBe(1);
      expect(result.stderr.trim().split("\n")).toHaveLength(1);
      expect(result.stderr).toMatch(/keen: run error: 401 authentication_error/);
    } finally {
      await server.close();
    }
  });

  it("keen demo runs offline end to end and leaves a committed, passing test", async () => {
    const dir = join(await mkdtemp(join(tmpdir(), "keen-demo-test-")), "repo");
    const result = await keen(["demo", "--dir", dir]);
    expect(result.stderr).toBe("");
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain(`The sample repository is at ${dir}`);
    const log = await execa("git", ["log", "--format=%s", "-2"], { cwd: dir });
    expect(log.stdout.split("\n")).toEqual(["Add a test for greet() and make sure the test suite passes.", "Sample project"]);
    const tests = await execa("node", ["--test"], { cwd: dir, reject: false });
    expect(tests.exitCode).toBe(0);
  });
});
