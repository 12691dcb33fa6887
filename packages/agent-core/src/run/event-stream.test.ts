import { appendFile, mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { runEventLogContract, sampleEvent } from "../testing/event-log-contract.js";
import { KeenEvent, type KeenEventInput } from "../events.js";
import { emptyUsage } from "../model/model.js";
import { EventStream } from "./event-stream.js";
import { MemoryEventLog, NdjsonEventLog } from "./event-log.js";

const phase = (agentId: string): KeenEventInput => ({ type: "agent.phase", agentId, phase: "RUN", previous: null });

describe("EventStream", () => {
  it("stamps runId, gap-free seq and an ISO time on every event", () => {
    const stream = new EventStream("run_1");
    stream.emit(phase("a"));
    stream.emit({ type: "model.text", agentId: "a", text: "hi" });
    expect(stream.history.map((e) => [e.runId, e.seq])).toEqual([
      ["run_1", 0],
      ["run_1", 1],
    ]);
    for (const event of stream.history) {
      expect(() => KeenEvent.parse(event)).not.toThrow();
      expect(new Date(event.at).toISOString()).toBe(event.at);
    }
  });

  it("gives a slow consumer every event in order", async () => {
    const stream = new EventStream("run_2");
    const seen: number[] = [];
    const consumer = (async () => {
      for await (const event of stream) {
        seen.push(event.seq);
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    })();
    for (let i = 0; i < 200; i++) stream.emit(phase(`a${i}`));
    stream.close();
    await consumer;
    expect(seen).toEqual(Array.from({ length: 200 }, (_, i) => i));
  });

  it("lets a late iterator replay from the start or from a seq", async () => {
    const stream = new EventStream("run_3");
    for (let i = 0; i < 5; i++) stream.emit(phase("a"));
    stream.close();
    const all: number[] = [];
    for await (const event of stream) all.push(event.seq);
    const tail: number[] = [];
    for await (const event of stream.iterate(3)) tail.push(event.seq);
    expect(all).toEqual([0, 1, 2, 3, 4]);
    expect(tail).toEqual([3, 4]);
  });

  it("delivers typed subscriptions and survives a throwing subscriber", () => {
    const stream = new EventStream("run_4");
    const texts: string[] = [];
    stream.on("model.text", () => {
      throw new Error("subscriber bug");
    });
    const off = stream.on("model.text", (event) => texts.push(event.text));
    const all: string[] = [];
    stream.on("*", (event) => all.push(event.type));
    stream.emit({ type: "model.text", agentId: "a", text: "one" });
    off();
    stream.emit({ type: "model.text", agentId: "a", text: "two" });
    stream.emit({ type: "agent.completed", agentId: "a", status: "success", summary: "", usage: emptyUsage() });
    expect(texts).toEqual(["one"]);
    expect(all).toEqual(["model.text", "model.text", "agent.completed"]);
  });

  it("refuses events after close", () => {
    const stream = new EventStream("run_5");
    stream.close();
    expect(() => stream.emit(phase("a"))).toThrow(/closed/);
  });

  it("round-trips every event through JSON", () => {
    const stream = new EventStream("run_6");
    const event = stream.emit({
      type: "model.usage",
      agentId: "root",
      model: "m",
      requestId: "req_1",
      usage: { inputTokens: 1, outputTokens: 2, cacheCreationInputTokens: 3, cacheReadInputTokens: 4 },
      agentTotal: { inputTokens: 1, outputTokens: 2, cacheCreationInputTokens: 3, cacheReadInputTokens: 4 },
      stopReason: "end_turn",
    });
    expect(KeenEvent.parse(JSON.parse(JSON.stringify(event)))).toEqual(event);
  });

  it("stamps the protocol version on every event", () => {
    const stream = new EventStream("run_7");
    expect(stream.emit(phase("a")).protocol).toBe(1);
  });

  it("keeps memory flat over a 10,000-event run: a window in memory, a bounded log, and a consumer that keeps up reads every event", async () => {
    const log = new MemoryEventLog({ maxEvents: 500 });
    const stream = new EventStream("run_8", { log, window: 100 });
    const seen: number[] = [];
    const consumer = (async () => {
      for await (const event of stream) seen.push(event.seq);
    })();
    for (let i = 0; i < 10_000; i++) {
      stream.emit({ type: "model.text", agentId: "a", text: `line ${i}` });
      if (i % 50 === 0) await new Promise((resolve) => setImmediate(resolve));
      expect(stream.history.length).toBeLessThanOrEqual(100);
      expect(log.size).toBeLessThanOrEqual(500);
    }
    stream.close();
    await consumer;
    expect(seen).toEqual(Array.from({ length: 10_000 }, (_, i) => i));
  });

  it("serves an iterator that fell behind the window from the log", async () => {
    const stream = new EventStream("run_9", { window: 10 });
    for (let i = 0; i < 300; i++) stream.emit(phase("a"));
    stream.close();
    const seen: number[] = [];
    for await (const event of stream.iterate(0)) seen.push(event.seq);
    expect(seen).toEqual(Array.from({ length: 300 }, (_, i) => i));
  });

  it("tells a consumer that fell behind a bounded log, with code events_evicted", async () => {
    const stream = new EventStream("run_10", { window: 10, log: new MemoryEventLog({ maxEvents: 20 }) });
    for (let i = 0; i < 100; i++) stream.emit(phase("a"));
    stream.close();
    await expect((async () => { for await (const _ of stream.iterate(0)) void _; })()).rejects.toMatchObject({ code: "events_evicted" });
  });

  it("continues numbering after the last event of a durable log (a resumed run never reuses a seq)", async () => {
    const dir = await mkdtemp(join(tmpdir(), "keen-log-"));
    const path = join(dir, "events.ndjson");
    const first = new EventStream("run_11", { log: await NdjsonEventLog.open(path) });
    for (let i = 0; i < 7; i++) first.emit(phase("a"));
    // A snapshot taken at seq 3 says 3; the log knows 0..6 were emitted.
    const resumed = new EventStream("run_11", { startSeq: 3, log: await NdjsonEventLog.open(path) });
    await resumed.continueAfterLog();
    expect(resumed.emit(phase("a")).seq).toBe(7);
    const lines = (await readFile(path, "utf8")).trim().split("\n").map((line) => JSON.parse(line).seq);
    expect(lines).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  it("an iterator opened on a resumed stream before it continues after the log starts at this process's first event, replaying none of the dead process's", async () => {
    const dir = await mkdtemp(join(tmpdir(), "keen-log-"));
    const path = join(dir, "events.ndjson");
    const first = new EventStream("run_13", { log: await NdjsonEventLog.open(path) });
    for (let i = 0; i < 7; i++) first.emit(phase("a"));
    const resumed = new EventStream("run_13", { startSeq: 3, log: await NdjsonEventLog.open(path) });
    // The engine starts continuing, and the host iterates as soon as it has the run, while the log is still being read.
    const continuing = resumed.continueAfterLog();
    const seen = (async () => {
      const seqs: number[] = [];
      for await (const event of resumed) seqs.push(event.seq);
      return seqs;
    })();
    await continuing;
    resumed.emit(phase("b"));
    resumed.emit(phase("c"));
    resumed.close();
    expect(await seen).toEqual([7, 8]);
    // Asked for explicitly, the earlier events are still there to replay.
    const replayed: number[] = [];
    for await (const event of resumed.iterate(3)) replayed.push(event.seq);
    expect(replayed).toEqual([3, 4, 5, 6, 7, 8]);
  });

  it("gives consumers a read-only view: no emit, no close", async () => {
    const stream = new EventStream("run_12");
    const reader = stream.reader() as unknown as Record<string, unknown>;
    expect(reader.emit).toBeUndefined();
    expect(reader.close).toBeUndefined();
    stream.emit(phase("a"));
    expect((reader.history as unknown[]).length).toBe(1);
  });
});

runEventLogContract("MemoryEventLog", { create: () => new MemoryEventLog({ maxEvents: 100 }), capacity: 100 }, { describe, it, expect });
runEventLogContract(
  "NdjsonEventLog",
  {
    create: async () => NdjsonEventLog.open(join(await mkdtemp(join(tmpdir(), "keen-log-")), "events.ndjson")),
    reopen: async (log) => {
      const path = (log as NdjsonEventLog).path;
      (log as NdjsonEventLog).close();
      return NdjsonEventLog.open(path);
    },
  },
  { describe, it, expect },
);

describe("NdjsonEventLog after a crash", () => {
  it("cuts a torn last line and continues after the last whole event", async () => {
    const path = join(await mkdtemp(join(tmpdir(), "keen-log-")), "events.ndjson");
    const log = await NdjsonEventLog.open(path);
    for (let seq = 0; seq < 3; seq++) log.append(sampleEvent(seq));
    log.close();
    await appendFile(path, '{"protocol":1,"runId":"run_c');
    const again = await NdjsonEventLog.open(path);
    expect(again.lastSeq()).toBe(2);
    again.append(sampleEvent(3));
    expect(again.readAfter(-1, 10).map((e) => e.seq)).toEqual([0, 1, 2, 3]);
  });
});
