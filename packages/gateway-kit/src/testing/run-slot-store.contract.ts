import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import { createRunSlots, type RunSlotStore } from "../limits/index.js";
import { TestClock } from "./clock.js";

/**
 * The behaviour every `RunSlotStore` must have: leases counted per key up to a limit, all or none
 * per acquire, renewed while alive and reclaimed once they lapse.
 *
 * @example
 * runSlotStoreContract("redis", () => createRedisRunSlotStore(redis));
 */
export function runSlotStoreContract(name: string, newStore: () => RunSlotStore | Promise<RunSlotStore>): void {
  describe(`RunSlotStore contract: ${name}`, () => {
    it("holds at most `limit` runs per user and per team, and frees a slot on release", async () => {
      const clock = new TestClock(Date.UTC(2026, 10, 25, 12, 0, 0));
      const slots = createRunSlots({ store: await newStore(), limits: { user: 2, team: 3 }, leaseMs: 10_000, now: clock.now });
      const team = randomUUID();
      const [ann, bob] = [randomUUID(), randomUUID()];
      const a1 = await slots.acquire({ runId: randomUUID(), userId: ann, teamId: team });
      await slots.acquire({ runId: randomUUID(), userId: ann, teamId: team });
      const refused = await slots.acquire({ runId: randomUUID(), userId: ann, teamId: team }).catch((e: unknown) => e);
      expect(refused).toMatchObject({ code: "too_many_concurrent_runs", details: { scope: "user", limit: 2, active: 2 } });
      await slots.acquire({ runId: randomUUID(), userId: bob, teamId: team });
      const teamFull = await slots.acquire({ runId: randomUUID(), userId: bob, teamId: team }).catch((e: unknown) => e);
      expect(teamFull).toMatchObject({ code: "too_many_concurrent_runs", details: { scope: "team", limit: 3, active: 3 } });
      // Refused acquires took nothing: the counts are unchanged.
      expect(await slots.active({ userId: bob })).toBe(1);
      expect(await slots.active({ teamId: team })).toBe(3);

      await a1.release();
      expect(await slots.active({ userId: ann })).toBe(1);
      await slots.acquire({ runId: randomUUID(), userId: bob, teamId: team });
      // Without a team, only the user's limit applies; acquiring again for the same run is a renewal.
      const solo = randomUUID();
      const runId = randomUUID();
      await slots.acquire({ runId, userId: solo });
      await slots.acquire({ runId, userId: solo });
      expect(await slots.active({ userId: solo })).toBe(1);
    });

    it("reclaims a crashed run's slot when its lease is not renewed, and the late renewal fails", async () => {
      const clock = new TestClock(Date.UTC(2026, 10, 25, 12, 0, 0));
      const slots = createRunSlots({ store: await newStore(), limits: { user: 1 }, leaseMs: 5_000, now: clock.now });
      const user = randomUUID();
      const crashed = await slots.acquire({ runId: randomUUID(), userId: user });
      clock.advance(3_000);
      await crashed.renew(); // heartbeat: now lives until +8 s
      expect(crashed.expiresAt.getTime()).toBe(clock.ms + 5_000);
      clock.advance(4_999);
      await expect(slots.acquire({ runId: randomUUID(), userId: user })).rejects.toMatchObject({ code: "too_many_concurrent_runs" });
      clock.advance(1); // lease over: the process stopped renewing
      expect(await slots.active({ userId: user })).toBe(0);
      const next = await slots.acquire({ runId: randomUUID(), userId: user });
      await expect(crashed.renew()).rejects.toMatchObject({ code: "run_slot_lost" });
      expect(await slots.active({ userId: user })).toBe(1);
      clock.advance(60_000);
      expect(await slots.reclaimExpired()).toBeGreaterThanOrEqual(1);
      await expect(next.renew()).rejects.toMatchObject({ code: "run_slot_lost" });
    });

    it("gives out exactly `limit` slots to concurrent acquires", async () => {
      const clock = new TestClock(Date.UTC(2026, 10, 25, 12, 0, 0));
      const slots = createRunSlots({ store: await newStore(), limits: { user: 3 }, leaseMs: 60_000, now: clock.now });
      const user = randomUUID();
      const results = await Promise.allSettled(Array.from({ length: 20 }, () => slots.acquire({ runId: randomUUID(), userId: user })));
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(3);
      expect(await slots.active({ userId: user })).toBe(3);
    });
  });
}
