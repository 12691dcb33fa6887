import { afterEach, describe, expect, it } from "vitest";
import type { KeenEvent } from "../events.js";
import { anthropic } from "../model/anthropic.js";
import { simulatedClock } from "../model/retry.js";
import { reply, startMessagesServer, type MessagesServer, type ReplyPolicy } from "../testing/index.js";
import { builtinTools } from "../tools/index.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo } from "../workspace/test-repo.js";
import { startRun } from "./start-run.js";

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

/** A run whose model retries on a simulated clock: minutes of backoff take no real time. */
async function runThrough(policy: (now: number) => ReturnType<ReplyPolicy>) {
  const clock = simulatedClock();
  server = await startMessagesServer({ policy: () => policy(clock.now()) });
  const workspace = await LocalWorkspace.open(await createTestRepo());
  const model = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url, retry: { now: clock.now, sleep: clock.sleep } });
  const run = startRun({ vision: "List the files", workspace, model, tools: builtinTools() });
  const events: KeenEvent[] = [];
  for await (const event of run) events.push(event);
  return { result: await run.result, events, clock };
}

describe("a run under model overload (offline server faults, default retry policy)", () => {
  it("rides out a minute of 529s in the middle of a run and finishes", async () => {
    let overloadFrom: number | undefined;
    const { result, events, clock } = await runThrough((now) => {
      const served = server!.requests.filter((r) => r.status === 200).length;
      if (served === 0) return reply.toolUse("list_files", {});
      overloadFrom ??= now;
      return now - overloadFrom < 60_000 ? reply.error(529) : reply.text("Listed them.");
    });
    expect(result.status).toBe("success");
    expect(result.summary).toBe("Listed them.");
    const retries = events.filter((e) => e.type === "model.retry");
    expect(retries.length).toBeGreaterThanOrEqual(4);
    expect(retries.every((e) => e.type === "model.retry" && e.status === 529)).toBe(true);
    expect(clock.now() - overloadFrom!).toBeGreaterThanOrEqual(60_000);
  });

  it("ends with a model_unavailable error, not a generic one, when the overload outlasts the retry policy", async () => {
    const { result, events } = await runThrough(() => reply.error(529));
    expect(result.error?.code).toBe("model_unavailable");
    expect(result.error?.message).toMatch(/529 overloaded_error.*can be resumed/);
    expect(events.filter((e) => e.type === "model.retry").length).toBeGreaterThan(4);
  });
});
