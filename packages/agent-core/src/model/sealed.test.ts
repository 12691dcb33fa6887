import { describe, expect, it } from "vitest";
import { estimateMessageTokens } from "./estimate.js";
import type { Message } from "./model.js";
import { isSealed, perSealedEntry, seal } from "./sealed.js";

describe("seal", () => {
  it("freezes an entry and everything in it, also below an object that was frozen alone", () => {
    const inner = { deep: { value: 1 } };
    const outer = Object.freeze({ inner, list: [{ a: 1 }] });
    expect(seal(outer)).toBe(outer);
    expect(isSealed(outer)).toBe(true);
    expect(Object.isFrozen(inner.deep)).toBe(true);
    expect(Object.isFrozen(outer.list[0])).toBe(true);
    expect(() => {
      (inner.deep as { value: number }).value = 2;
    }).toThrow(TypeError);
    // Only the entry itself counts as sealed: what is in it may be shared with other entries.
    expect(isSealed(inner)).toBe(false);
  });

  it("ends on an entry that refers to itself, and on one nested deeper than the call stack goes", () => {
    const looped: Record<string, unknown> = { name: "loop" };
    looped.self = looped;
    expect(isSealed(seal(looped))).toBe(true);
    let deep: Record<string, unknown> = {};
    const top = deep;
    for (let i = 0; i < 100_000; i++) deep = (deep.next = {}) as Record<string, unknown>;
    expect(isSealed(seal(top))).toBe(true);
    expect(Object.isFrozen(deep)).toBe(true);
  });

  it("leaves an entry holding anything but JSON data as it is: not sealed, not frozen", () => {
    class Point {
      x = 1;
    }
    const getter = {};
    Object.defineProperty(getter, "size", { get: () => 1, enumerable: true });
    for (const inner of [new Date(0), new Uint8Array([1]), getter, { toJSON: () => "x" }, new Point(), new Map(), 1n]) {
      const entry = { role: "user", content: [{ type: "text", text: "x", inner }] };
      expect(isSealed(seal(entry))).toBe(false);
      expect(Object.isFrozen(entry)).toBe(false);
      expect(Object.isFrozen(entry.content[0])).toBe(false);
    }
  });
});

describe("perSealedEntry", () => {
  it("works a value out once for a sealed entry and every time for any other", () => {
    let calls = 0;
    const size = perSealedEntry((entry: { text: string }) => (calls++, entry.text.length));
    const open = { text: "abc" };
    expect(size(open)).toBe(3);
    open.text = "abcdef";
    expect(size(open)).toBe(6);
    expect(calls).toBe(2);
    const closed = seal({ text: "abcd" });
    expect([size(closed), size(closed), size(closed)]).toEqual([4, 4, 4]);
    expect(calls).toBe(3);
  });

  it("lets estimateMessageTokens follow a message until it is sealed", () => {
    const message: Message = { role: "user", content: "x".repeat(40) };
    expect(estimateMessageTokens(message)).toBe(10);
    message.content = "x".repeat(400);
    expect(estimateMessageTokens(message)).toBe(100);
    seal(message);
    expect(estimateMessageTokens(message)).toBe(100);
  });
});
