import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

/**
 * The server's Prometheus metrics, in a registry of its own (so two servers in one process,
 * as in tests, do not share counters).
 *
 * @example
 * const metrics = createMetrics({ queueDepth: () => queue.depth("keen-runs") });
 * ctx.body = await metrics.registry.metrics();
 */
export function createMetrics(options: { queueDepth: () => Promise<number> }) {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  return {
    registry,
    httpDuration: new Histogram({
      name: "keen_http_request_duration_seconds",
      help: "HTTP request latency by route template and status",
      labelNames: ["method", "route", "status"] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    runsActive: new Gauge({ name: "keen_runs_active", help: "Runs executing in this process", registers: [registry] }),
    eventsWritten: new Counter({ name: "keen_events_written_total", help: "Run events written to the events table", registers: [registry] }),
    tokens: new Counter({ name: "keen_model_tokens_total", help: "Model tokens used by runs (all kinds)", registers: [registry] }),
    creditsCharged: new Counter({ name: "keen_credits_charged_micro_total", help: "Micro-credits charged at settlement", registers: [registry] }),
    streamsOpen: new Gauge({ name: "keen_streams_open", help: "Open SSE and WebSocket event streams", registers: [registry] }),
    queueDepth: new Gauge({
      name: "keen_queue_depth",
      help: "Run jobs waiting for a worker",
      registers: [registry],
      async collect() {
        this.set(await options.queueDepth().catch(() => 0));
      },
    }),
  };
}

export type ServerMetrics = ReturnType<typeof createMetrics>;
