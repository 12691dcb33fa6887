import type { TaskSnapshot } from "./task-state.js";

/**
 * Hands copies of the run's state to the host's `onSnapshot`, one at a time and in order. A
 * failing `onSnapshot` does not stop the run (the next snapshot may succeed).
 */
export class SnapshotQueue {
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly onSnapshot: ((snapshot: TaskSnapshot) => void | Promise<void>) | undefined) {}

  /** Queues a copy of `state` as it is now; resolves once it (and every earlier one) is handed over. */
  push(state: TaskSnapshot): Promise<void> {
    const onSnapshot = this.onSnapshot;
    if (!onSnapshot) return Promise.resolve();
    const copy = JSON.parse(JSON.stringify(state)) as TaskSnapshot;
    this.queue = this.queue.then(() => onSnapshot(copy)).catch(() => {});
    return this.queue;
  }
}
