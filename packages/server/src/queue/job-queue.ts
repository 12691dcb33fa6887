import type PgBoss from "pg-boss";

export type JobHandler<T> = (data: T) => Promise<void>;

/**
 * Where run (and later webhook) jobs wait for a worker. Delivery is at least once: a handler
 * that throws is retried, and a job whose worker dies is delivered again, so handlers must be
 * idempotent (the run worker claims its run row atomically before it does anything).
 */
export interface JobQueue {
  readonly kind: "in-process" | "pg-boss";
  start(): Promise<void>;
  /**
   * Enqueues a job; a second send with the same `key` while the first waits is dropped. With
   * `delayMs` the job is not handed to a worker before that much time has passed.
   */
  send<T extends object>(queue: string, data: T, options?: { key?: string; delayMs?: number }): Promise<void>;
  /** Runs `handler` for jobs of `queue`, at most `concurrency` at once in this process. */
  work<T extends object>(queue: string, concurrency: number, handler: JobHandler<T>): Promise<void>;
  /** Jobs waiting (not yet started) in `queue`. */
  depth(queue: string): Promise<number>;
  /** Stops taking jobs and waits up to `timeoutMs` for running handlers. */
  stop(timeoutMs?: number): Promise<void>;
}

interface MemoryJob {
  data: object;
  key: string | undefined;
  attempt: number;
}

const RETRY_LIMIT = 3;

/**
 * A queue inside one process, for the embedded PGlite database (which one process owns). Jobs
 * live in memory; what makes them durable is the runs table, which the server re-enqueues from
 * on start.
 *
 * @example
 * const queue = inProcessQueue();
 * await queue.work("runs", 2, async (job) => { ... });
 * await queue.send("runs", { runId: "run_1" });
 */
export function inProcessQueue(): JobQueue {
  const waiting = new Map<string, MemoryJob[]>();
  const workers = new Map<string, { concurrency: number; active: number; handler: JobHandler<any> }>();
  const running = new Set<Promise<void>>();
  /** Keys of delayed jobs not yet waiting, so a keyed resend is dropped while they wait too. */
  const delayed = new Set<string>();
  let stopped = false;

  const pump = (queue: string) => {
    const worker = workers.get(queue);
    const jobs = waiting.get(queue);
    if (!worker || !jobs) return;
    while (!stopped && worker.active < worker.concurrency && jobs.length > 0) {
      const job = jobs.shift()!;
      worker.active += 1;
      const task = (async () => {
        try {
          await worker.handler(job.data);
        } catch {
          if (job.attempt + 1 < RETRY_LIMIT && !stopped) {
            const delay = 100 * 2 ** job.attempt;
            setTimeout(() => {
              jobs.push({ ...job, attempt: job.attempt + 1 });
              pump(queue);
            }, delay).unref();
          }
        } finally {
          worker.active -= 1;
        }
      })();
      running.add(task);
      void task.finally(() => {
        running.delete(task);
        pump(queue);
      });
    }
  };

  return {
    kind: "in-process",
    async start() {},
    async send(queue, data, options = {}) {
      if (stopped) throw new Error("The job queue is stopped");
      let jobs = waiting.get(queue);
      if (!jobs) waiting.set(queue, (jobs = []));
      if (options.key !== undefined && (jobs.some((j) => j.key === options.key) || delayed.has(`${queue}\0${options.key}`))) return;
      const job: MemoryJob = { data, key: options.key, attempt: 0 };
      if (options.delayMs && options.delayMs > 0) {
        const marker = options.key !== undefined ? `${queue}\0${options.key}` : undefined;
        if (marker) delayed.add(marker);
        setTimeout(() => {
          if (marker) delayed.delete(marker);
          if (stopped) return;
          jobs!.push(job);
          pump(queue);
        }, options.delayMs).unref();
        return;
      }
      jobs.push(job);
      queueMicrotask(() => pump(queue));
    },
    async work(queue, concurrency, handler) {
      if (workers.has(queue)) throw new Error(`A worker already serves queue ${queue}`);
      workers.set(queue, { concurrency, active: 0, handler });
      pump(queue);
    },
    async depth(queue) {
      return waiting.get(queue)?.length ?? 0;
    },
    async stop(timeoutMs = 10_000) {
      stopped = true;
      await Promise.race([Promise.allSettled([...running]), new Promise((resolve) => setTimeout(resolve, timeoutMs).unref())]);
    },
  };
}

/**
 * pg-boss on PostgreSQL: jobs survive restarts and are shared by every server and `keen worker`
 * process on the database. pg-boss keeps its tables in its own schema.
 *
 * @example
 * const queue = pgBossQueue({ url: process.env.DATABASE_URL!, schema: "keen_jobs" });
 * await queue.start();
 */
export function pgBossQueue(options: { url: string; schema: string; pollSeconds?: number; onError?: (error: unknown) => void }): JobQueue {
  // pg-boss is loaded the first time the queue is used, so a PGlite server never loads it.
  let loading: Promise<PgBoss> | undefined;
  const load = () =>
    (loading ??= import("pg-boss").then(({ default: PgBossClass }) => {
      const boss = new PgBossClass({ connectionString: options.url, schema: options.schema, max: 4, supervise: true, migrate: true });
      boss.on("error", (error) => options.onError?.(error));
      return boss;
    }));
  const created = new Set<string>();
  const ensure = async (queue: string) => {
    const boss = await load();
    if (created.has(queue)) return boss;
    if (!(await boss.getQueue(queue))) {
      await boss.createQueue(queue, { name: queue, retryLimit: RETRY_LIMIT, retryDelay: 1, retryBackoff: true }).catch(async (error) => {
        // Another process created it first.
        if (!(await boss.getQueue(queue))) throw error;
      });
    }
    created.add(queue);
    return boss;
  };
  return {
    kind: "pg-boss",
    async start() {
      await (await load()).start();
    },
    async send(queue, data, sendOptions = {}) {
      const boss = await ensure(queue);
      await boss.send(queue, data, {
        ...(sendOptions.key ? { singletonKey: sendOptions.key } : {}),
        ...(sendOptions.delayMs && sendOptions.delayMs > 0 ? { startAfter: new Date(Date.now() + sendOptions.delayMs) } : {}),
      });
    },
    async work(queue, concurrency, handler) {
      const boss = await ensure(queue);
      const pollingIntervalSeconds = options.pollSeconds ?? 0.5;
      for (let i = 0; i < concurrency; i++) {
        await boss.work<object>(queue, { batchSize: 1, pollingIntervalSeconds }, async (jobs) => {
          for (const job of jobs) await handler(job.data as never);
        });
      }
    },
    async depth(queue) {
      const boss = await ensure(queue);
      return boss.getQueueSize(queue);
    },
    async stop(timeoutMs = 10_000) {
      if (!loading) return;
      await (await loading).stop({ graceful: true, timeout: timeoutMs, wait: true });
    },
  };
}
