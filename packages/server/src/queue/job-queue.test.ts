import { randomBytes } from "node:crypto";
import pg from "pg";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { TEST_DATABASE_URL } from "../testing/harness.js";
import { inProcessQueue, pgBossQueue, type JobQueue } from "./job-queue.js";

const schemas: string[] = [];
afterAll(async () => {
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await client.connect();
  for (const schema of schemas) await client.query(`drop schema if exists "${schema}" cascade`);
  await client.end();
});

const adapters: Array<[string, () => JobQueue]> = [
  ["in-process", () => inProcessQueue()],
  [
    "pg-boss",
    () => {
      const schema = `q_${randomBytes(5).toString("hex")}`;
      schemas.push(schema);
      return pgBossQueue({ url: TEST_DATABASE_URL, schema });
    },
  ],
];

const until = async (check: () => boolean, ms = 15_000) => {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 20));
  }
};

/** The contract every JobQueue adapter keeps; the server relies on nothing more. */
describe.each(adapters)("JobQueue contract [%s]", (_name, make) => {
  let queue: JobQueue | undefined;
  afterEach(async () => {
    await queue?.stop(2_000);
    queue = undefined;
  });

  it("delivers every job sent, with its data", async () => {
    queue = make();
    await queue.start();
    const seen: number[] = [];
    await queue.work<{ n: number }>("jobs", 2, async (job) => {
      seen.push(job.n);
    });
    for (let n = 0; n < 20; n++) await queue.send("jobs", { n });
    await until(() => seen.length === 20);
    expect([...seen].sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i));
  });

  it("runs at most `concurrency` handlers at once", async () => {
    queue = make();
    await queue.start();
    let running = 0;
    let peak = 0;
    let done = 0;
    await queue.work("slow", 2, async () => {
      running += 1;
      peak = Math.max(peak, running);
      await new Promise((r) => setTimeout(r, 100));
      running -= 1;
      done += 1;
    });
    for (let n = 0; n < 6; n++) await queue.send("slow", { n });
    await until(() => done === 6);
    expect(peak).toBeLessThanOrEqual(2);
  });

  it("delivers a job again after its handler throws", async () => {
    queue = make();
    await queue.start();
    let attempts = 0;
    await queue.work("flaky", 1, async () => {
      attempts += 1;
      if (attempts === 1) throw new Error("first attempt fails");
    });
    await queue.send("flaky", { n: 1 });
    await until(() => attempts >= 2, 30_000);
    expect(attempts).toBe(2);
  });

  it("counts waiting jobs", async () => {
    queue = make();
    await queue.start();
    await queue.send("later", { n: 1 });
    await queue.send("later", { n: 2 });
    expect(await queue.depth("later")).toBe(2);
  });

  it("holds a delayed job back until its delay has passed", async () => {
    queue = make();
    await queue.start();
    const seen: string[] = [];
    await queue.work<{ name: string }>("timed", 2, async (job) => {
      seen.push(job.name);
    });
    await queue.send("timed", { name: "later" }, { delayMs: 3_000 });
    await queue.send("timed", { name: "now" });
    await until(() => seen.includes("now"));
    // Ordering, not wall time: the undelayed job sent after it ran first.
    expect(seen).toEqual(["now"]);
    await until(() => seen.length === 2, 30_000);
    expect(seen).toEqual(["now", "later"]);
  });
});
