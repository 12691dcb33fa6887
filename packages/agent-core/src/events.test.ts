import { describe, expect, it } from "vitest";
import { KeenEvent, keenEventJsonSchema, PROTOCOL_VERSION } from "./events.js";

describe("the event protocol", () => {
  it("exports a JSON Schema of the whole event union, generated from the zod schemas", () => {
    const schema = keenEventJsonSchema() as { $schema: string; oneOf?: any[]; anyOf?: any[] };
    expect(schema.$schema).toMatch(/2020-12/);
    const variants = schema.oneOf ?? schema.anyOf ?? [];
    const types = variants.map((variant) => variant.properties?.type?.const).sort();
    const expected = KeenEvent.options.map((option) => option.shape.type.value).sort();
    expect(types).toEqual(expected);
    for (const variant of variants) {
      expect(variant.required).toEqual(expect.arrayContaining(["protocol", "runId", "agentId", "seq", "at", "type"]));
      expect(variant.properties.protocol.const).toBe(PROTOCOL_VERSION);
    }
    // Plain JSON: it survives a round trip unchanged.
    expect(JSON.parse(JSON.stringify(schema))).toEqual(schema);
  });

  it("rejects an event of another protocol version", () => {
    const event = { protocol: 99, runId: "r", agentId: "root", seq: 0, at: new Date(0).toISOString(), type: "model.text", text: "x" };
    expect(() => KeenEvent.parse(event)).toThrow();
    expect(KeenEvent.parse({ ...event, protocol: PROTOCOL_VERSION }).protocol).toBe(PROTOCOL_VERSION);
    // Stored before the field existed: read as version 1.
    const { protocol: _omitted, ...older } = event;
    expect(KeenEvent.parse(older).protocol).toBe(1);
  });
});
