import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { afterEach, describe, expect, it } from "vitest";
import { reply, startMessagesServer, type MessagesServer } from "@keen/agent-core/testing";
import { gitRepo, keen } from "./testing/keen-process.js";

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const preload = fileURLToPath(new URL("./testing/block-threadpool.mjs", import.meta.url));

describe("Ctrl-C", { timeout: 60_000 }, () => {
  it("a second Ctrl-C ends keen at once even while every libuv thread is blocked", async () => {
    const fifo = join(await mkdtemp(join(tmpdir(), "keen-fifo-")), "fifo");
    await execa("mkfifo", [fifo]);
    let child: ReturnType<typeof keen> | undefined;
    let toolSent!: () => void;
    const blocked = new Promise<void>((resolve) => (toolSent = resolve));
    // The first reply asks for a file read, after every threadpool thread of keen was blocked:
    // the read never returns, so the agent's turn, and the graceful stop that waits for it, never end.
    server = await startMessagesServer({
      policy: async (_request, { index }) => {
        if (index > 0) return new Promise(() => {});
        child!.kill("SIGUSR2");
        await new Promise((resolve) => setTimeout(resolve, 300));
        setTimeout(toolSent, 500);
        return reply.toolUse("read_file", { path: "README.md" });
      },
    });
    child = keen(["run", "Wait", "--repo", await gitRepo(), "--no-sandbox"], { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url, KEEN_FORCE_TTY: "0", KEEN_TEST_FIFO: fifo }, { preload, timeout: 40_000 });
    await blocked;
    child.kill("SIGINT");
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const second = Date.now();
    child.kill("SIGINT");
    const result = await child;
    // Ended by the second signal (as a shell sees it: 130), not by the test's timeout.
    expect(result.timedOut, result.stderr).toBe(false);
    expect(Date.now() - second).toBeLessThan(10_000);
    expect(result.signal ?? `exit ${result.exitCode}`).toMatch(/SIGINT|exit 130/);
    expect(result.stderr).toMatch(/keen: (stopped at once|interrupted)/);
  });
});
