import { describe, expect, it } from "vitest";
import { KeenEvent, type KeenEventInput } from "../events.js";
import { emptyUsage } from "../model/model.js";
import { EventStream } from "./event-stream.js";

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
});
