// Delivery of one run's events to many subscribers: SUBSCRIBERS SSE clients and SUBSCRIBERS
// WebSocket clients (default 1000 each) follow one run while EVENTS events (default 2000) are
// written through the server's event writer. Prints deliveries per second and p50/p99 latency
// from write to receipt, then the time to ready on embedded defaults (first start and restart).
// Subscribers connect in batches of 50 before the first event is written.
// Run: npx tsx bench/server-stream.ts   (DATABASE_URL to use PostgreSQL instead of PGlite;
// SUBSCRIBERS, EVENTS to resize). Clients run in the server's process, so latencies include
// their parsing; compare runs on one machine, not absolute numbers.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { WebSocket } from "ws";
import { RunEventLog, RunEventWriter } from "../packages/server/src/events/event-log.js";
import { createServer } from "../packages/server/src/server.js";

const SUBSCRIBERS = Number(process.env.SUBSCRIBERS ?? 1000);
const EVENTS = Number(process.env.EVENTS ?? 2000);
const DATABASE_URL = process.env.DATABASE_URL;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

async function timeToReady(): Promise<{ first: number; restart: number }> {
  const dataDir = await mkdtemp(join(tmpdir(), "keen-bench-ready-"));
  try {
    let started = performance.now();
    const first = await createServer({ port: 0, dataDir, logLevel: "silent" });
    const firstMs = performance.now() - started;
    await first.close();
    started = performance.now();
    const again = await createServer({ port: 0, dataDir, logLevel: "silent" });
    const restartMs = performance.now() - started;
    await again.close();
    return { first: firstMs, restart: restartMs };
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const dataDir = await mkdtemp(join(tmpdir(), "keen-bench-stream-"));
  const schema = `bench_stream_${process.pid}`;
  const server = await createServer({
    port: 0,
    dataDir,
    logLevel: "silent",
    workers: 0,
    sseHeartbeatMs: 60_000,
    // One user opens every SSE connection; the default 600 requests a minute would refuse most.
    rateLimit: 100_000,
    maxStreamsPerUser: 100_000,
    maxStreams: 100_000,
    ...(DATABASE_URL ? { databaseUrl: DATABASE_URL, databaseSchema: schema } : {}),
  });
  const url = await server.listen();
  try {
    const signup = await fetch(`${url}/v1/auth/signup`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email: "bench@keen.test", password: "correct horse battery staple" }),
    });
    const account = (await signup.json()) as { accessToken: string; teamId: string; user: { id: string } };
    const headers = { authorization: `Bearer ${account.accessToken}` };
    const runId = "run_00000000-0000-4000-8000-000000000001";
    const db = server.database.db;
    await db
      .insertInto("runs")
      .values({
        id: runId, team_id: account.teamId, user_id: account.user.id, vision: "bench", repo: "{}", options: "{}", model: "claude-haiku-4-5", status: "running",
        snapshot: null, reservation_id: null, charged: null, usage: null, error: null, summary: null, base_commit: null, head_commit: null, branch: null,
        worker_id: null, heartbeat_at: null, created_at: new Date(), started_at: new Date(), finished_at: null,
      })
      .execute();

    const latencies: number[] = [];
    let delivered = 0;
    const receive = (data: string) => {
      const sentAt = (JSON.parse(data) as { sentAt?: number }).sentAt;
      if (sentAt !== undefined) {
        latencies.push(performance.now() - sentAt);
        delivered += 1;
      }
    };
    // Subscribers connect in batches (a burst of 2 000 connects overflows the listen backlog on
    // a loaded machine); each counts as connected once its response headers or upgrade arrived.
    let failed = 0;
    const connectSse = async (): Promise<{ done: Promise<void> }> => {
      const res = await fetch(`${url}/v1/runs/${runId}/events`, { headers });
      if (res.status !== 200 || !res.body) throw new Error(`SSE answered ${res.status}`);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      const done = (async () => {
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return;
          buffer += value;
          let end: number;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const frame = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const data = frame.split("\n").find((l) => l.startsWith("data: "));
            if (frame.includes("event: end")) return;
            if (data) receive(data.slice(6));
          }
        }
      })().catch(() => {
        failed += 1;
      });
      return { done };
    };
    const connectWs = () =>
      new Promise<{ done: Promise<void> }>((resolve, reject) => {
        const socket = new WebSocket(`${url.replace("http", "ws")}/v1/runs/${runId}/stream`, { headers });
        const closed = new Promise<void>((done) => socket.on("close", () => done()));
        socket.on("message", (data) => receive(String(data)));
        socket.once("open", () => resolve({ done: closed }));
        socket.on("error", (error) => {
          reject(error);
          failed += 1;
        });
      });
    const streams: Array<Promise<void>> = [];
    const connect = async (open: () => Promise<{ done: Promise<void> }>) => {
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          streams.push((await open()).done);
          return;
        } catch {
          await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
        }
      }
      failed += 1;
    };
    const connectStarted = performance.now();
    for (let i = 0; i < SUBSCRIBERS; i += 50) {
      const batch = Math.min(50, SUBSCRIBERS - i);
      await Promise.all(Array.from({ length: batch }, () => Promise.all([connect(connectSse), connect(connectWs)])));
    }
    console.log(`connected ${streams.length} subscribers in ${((performance.now() - connectStarted) / 1000).toFixed(1)} s`);
    const sse: Array<Promise<void>> = streams;
    const ws: Array<Promise<void>> = [];
    // Let every subscriber finish its (empty) replay.
    await new Promise((r) => setTimeout(r, 3_000));

    // The server's own bus, so subscribers get events exactly as a worker in this process publishes them.
    const bus = server.bus;
    const writer = new RunEventWriter(runId, 1, new RunEventLog(db), bus);
    const started = performance.now();
    for (let i = 0; i < EVENTS; i++) {
      writer.write({ type: "model.text", agentId: "root", at: new Date().toISOString(), text: `event ${i}`, sentAt: performance.now() });
      if (i % 20 === 19) await new Promise((r) => setTimeout(r, 1));
    }
    await writer.flush();
    await db.updateTable("runs").set({ status: "succeeded" }).where("id", "=", runId).execute();
    await bus.publish({ runId, lastSeq: writer.lastSeq, ended: true });
    // A give-up timer that must not keep the process alive once every subscriber is done.
    let giveUp: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all([...sse, ...ws]), new Promise((r) => (giveUp = setTimeout(r, 600_000)))]);
    clearTimeout(giveUp);
    const seconds = (performance.now() - started) / 1000;
    latencies.sort((a, b) => a - b);
    const expected = EVENTS * SUBSCRIBERS * 2;
    console.log(`subscribers: ${SUBSCRIBERS} SSE + ${SUBSCRIBERS} WebSocket, events: ${EVENTS}, database: ${server.database.kind}`);
    console.log(`events written: ${(EVENTS / seconds).toFixed(0)}/s; deliveries: ${delivered}/${expected} (${(delivered / seconds).toFixed(0)}/s)`);
    if (failed > 0) console.log(`subscriber connections that failed or broke: ${failed}`);
    console.log(`delivery latency: p50 ${percentile(latencies, 50).toFixed(1)} ms, p99 ${percentile(latencies, 99).toFixed(1)} ms`);
  } finally {
    await server.close();
    await rm(dataDir, { recursive: true, force: true });
  }
  const ready = await timeToReady();
  console.log(`time to ready on embedded defaults: first start ${ready.first.toFixed(0)} ms, restart ${ready.restart.toFixed(0)} ms`);
}

await main();
