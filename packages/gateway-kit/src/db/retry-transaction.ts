import type { Kysely, Transaction } from "kysely";

/** SQLSTATEs worth another attempt: serialization failure and deadlock. */
const RETRYABLE = new Set(["40001", "40P01"]);

/**
 * Runs `work` in a transaction of its own, retried with a short random backoff when PostgreSQL
 * aborts it with a serialization failure or a deadlock, at most `maxAttempts` times in all.
 */
export async function retryTransaction<DB, T>(db: Kysely<DB>, work: (trx: Transaction<DB>) => Promise<T>, maxAttempts: number): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await db.transaction().execute(work);
    } catch (error) {
      const code = (error as { code?: unknown })?.code;
      if (typeof code !== "string" || !RETRYABLE.has(code) || attempt >= maxAttempts) throw error;
      await new Promise((resolve) => setTimeout(resolve, Math.random() * Math.min(100, 2 ** attempt)));
    }
  }
}
