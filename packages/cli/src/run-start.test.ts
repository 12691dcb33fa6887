import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { reply, startMessagesServer, type MessagesServer } from "@keen/agent-core/testing";
import { branches, git, gitRepo, keen } from "./testing/keen-process.js";

const preload = fileURLToPath(new URL("./testing/record-spawns.mjs", import.meta.url));

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

describe("keen run before its first model request", () => {
  it("starts at most five git processes on a repository without linked worktrees, and none of them writes the user's checkout", async () => {
    const log = join(await mkdtemp(join(tmpdir(), "keen-spawns-")), "spawns.txt");
    let before: string[] | undefined;
    server = await startMessagesServer({
      policy: async (_request, { index }) => {
        // keen waits for this answer: what the log holds now is what ran before the first request.
        if (index === 0) before = (await readFile(log, "utf8").catch(() => "")).split("\n").filter(Boolean);
        return reply.text("done");
      },
    });
    const dir = await gitRepo({ "README.md": "# r\n", "src/a.ts": "export const a = 1;\n" });
    const head = await git(dir, "rev-parse", "HEAD");
    const result = await keen(["run", "Say done", "--repo", dir, "--no-sandbox", "--json", "--max-depth", "0", "--max-turns", "1"], { ANTHROPIC_API_KEY: "k", ANTHROPIC_BASE_URL: server.url, KEEN_SPAWN_LOG: log, KEEN_GIT_LAUNCHER: "0" }, { preload });
    expect(before, result.stderr).toBeDefined();
    // The log records spawns, so git's launcher (its resident shell) is off here: every git call is one.
    // Opening (one rev-parse; nothing to list or prune), the run branch (update-ref) and its
    // worktree's checkout, the repository overview (the start commit's files, listed from the
    // object store while the worktree is made); HEAD, the base, the snapshot folder and the
    // worktree's registration are read or written as files.
    expect(before).toContain("git rev-parse");
    expect(before).toContain("git update-ref");
    expect(before).not.toContain("git worktree");
    expect(before).toContain("git reset");
    expect(before).toContain("git ls-tree");
    expect(before).not.toContain("git ls-files");
    expect(before!.length).toBeLessThanOrEqual(5);
    // The user's checkout: still on main at the same commit.
    expect(await git(dir, "rev-parse", "HEAD")).toBe(head);
    expect(await git(dir, "symbolic-ref", "--short", "HEAD")).toBe("main");
    expect((await branches(dir)).filter((b) => b !== "main").every((b) => b.startsWith("keen/"))).toBe(true);
  });
});
