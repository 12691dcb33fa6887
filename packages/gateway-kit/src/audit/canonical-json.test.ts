import { createHash } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { canonicalJson } from "./canonical-json.js";
import { auditPiiDigest, auditRowHash } from "./audit-log.js";

/** Rebuilds an object with its keys inserted in a shuffled order, recursively. */
function reorder(value: unknown, seed: number): unknown {
  if (Array.isArray(value)) return value.map((v, i) => reorder(v, seed + i));
  if (value && typeof value === "object") {
    const entries = Object.entries(value).map(([k, v], i) => [k, reorder(v, seed * 31 + i)] as const);
    entries.sort((a, b) => ((a[0].length * 7 + seed) % 5) - ((b[0].length * 7 + seed) % 5) || (seed % 2 ? 1 : -1));
    return Object.fromEntries(entries);
  }
  return value;
}

describe("canonicalJson properties", () => {
  const json = fc.jsonValue();

  it("is valid JSON that parses back to an equal value", () => {
    fc.assert(fc.property(json, (value) => {
      expect(JSON.parse(canonicalJson(value))).toEqual(JSON.parse(JSON.stringify(value)));
    }), { numRuns: 300 });
  });

  it("is a fixed point: canonical → parse → canonical gives the same bytes", () => {
    fc.assert(fc.property(json, (value) => {
      const once = canonicalJson(value);
      expect(canonicalJson(JSON.parse(once))).toBe(once);
    }), { numRuns: 300 });
  });

  it("does not depend on key insertion order", () => {
    fc.assert(fc.property(json, fc.integer({ min: 0, max: 1000 }), (value, seed) => {
      expect(canonicalJson(reorder(value, seed))).toBe(canonicalJson(value));
    }), { numRuns: 300 });
  });
});

describe("audit hashes", () => {
  it("are SHA-256 over the documented canonical records", () => {
    const at = new Date("2026-11-25T19:00:00.123Z");
    const pii = auditPiiDigest("ab".repeat(16), { actorId: "u1", target: "user:u1", ip: "192.0.2.1", requestId: "r1", details: { b: 2, a: 1 } });
    expect(pii).toBe(createHash("sha256").update(`${"ab".repeat(16)}\n{"actor":"u1","details":{"a":1,"b":2},"ip":"192.0.2.1","requestId":"r1","target":"user:u1"}`).digest("hex"));
    const hash = auditRowHash({ tenantKey: "t1", seq: 3, at, action: "auth.login", result: "success", piiDigest: pii, prevHash: "0".repeat(64) });
    const record = `{"action":"auth.login","at":"2026-11-25T19:00:00.123Z","pii":"${pii}","prev":"${"0".repeat(64)}","result":"success","seq":3,"tenant":"t1","v":1}`;
    expect(hash).toBe(createHash("sha256").update(record).digest("hex"));
  });
});
