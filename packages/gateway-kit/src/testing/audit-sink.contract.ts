import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { AuditEventInput, AuditSink } from "../audit/index.js";

/** What a sink under test is made of: the sink, and a way to read back what it kept for a tenant, oldest first. */
export interface AuditSinkUnderTest {
  sink: AuditSink;
  read(tenantId: string | null): Promise<ReadonlyArray<Record<string, any>>>;
}

/**
 * The behaviour every `AuditSink` must have: each recorded event is kept with its fields, in
 * order per tenant, none lost when many arrive at once, tenants apart.
 *
 * @example
 * auditSinkContract("siem", async () => ({ sink: createSiemSink(client), read: (tenant) => client.search(tenant) }));
 */
export function auditSinkContract(name: string, setup: () => AuditSinkUnderTest | Promise<AuditSinkUnderTest>): void {
  describe(`AuditSink contract: ${name}`, () => {
    it("keeps each event's fields, in order", async () => {
      const { sink, read } = await setup();
      const tenantId = `team_${randomUUID()}`;
      const events: AuditEventInput[] = [
        { tenantId, actorId: "u_1", action: "api_key.create", target: "api_key:k1", result: "success", ip: "198.51.100.4", requestId: "r1", details: { scopes: ["runs:read"] } },
        { tenantId, actorId: null, action: "auth.login", result: "failure", ip: "203.0.113.9" },
        { tenantId, actorId: "u_1", action: "credits.settle", target: "run:1", result: "denied", details: { charged: 12 } },
      ];
      for (const event of events) await sink.record(event);
      const kept = await read(tenantId);
      expect(kept).toHaveLength(3);
      events.forEach((event, i) => expect(kept[i]).toMatchObject(event));
    });

    it("loses nothing when many events arrive at once, and keeps tenants apart", async () => {
      const { sink, read } = await setup();
      const [a, b] = [`team_${randomUUID()}`, `team_${randomUUID()}`];
      await Promise.all(
        Array.from({ length: 40 }, (_, i) => sink.record({ tenantId: i % 2 ? a : b, actorId: `u_${i}`, action: "run.start", result: "success", details: { i } })),
      );
      const [keptA, keptB] = [await read(a), await read(b)];
      expect(keptA).toHaveLength(20);
      expect(keptB).toHaveLength(20);
      expect(new Set(keptA.map((e) => e.details?.i)).size).toBe(20);
      expect(keptA.every((e) => e.tenantId === a)).toBe(true);
    });
  });
}
