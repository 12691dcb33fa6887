import { ServerError } from "../errors.js";

/** Gives a slot back; calling it again does nothing. */
export type ReleaseSlot = () => void;

/**
 * The open event streams (SSE and WebSocket together) of one server process, per user and in
 * all: each connection holds a file descriptor, a socket's buffers and a follower's event buffer
 * until it ends, so one credential must not be able to open them without bound. The same
 * counting caps result downloads (`code: "too_many_downloads"`), each of which holds a git process.
 */
export interface StreamSlots {
  /**
   * Takes a slot for a stream of `userId`; throws `too_many_streams` (429) when the user's or
   * the process's streams are at their cap. Release it exactly when the connection closes.
   */
  acquire(userId: string): ReleaseSlot;
  /** Open streams of `userId`, or of every user. */
  open(userId?: string): number;
}

/**
 * @example
 * const slots = createStreamSlots({ perUser: 20, total: 2000 });
 * const release = slots.acquire(principal.userId);
 * socket.once("close", release);
 */
export function createStreamSlots(limits: { perUser: number; total: number; code?: "too_many_streams" | "too_many_downloads"; noun?: string }): StreamSlots {
  const code = limits.code ?? "too_many_streams";
  const noun = limits.noun ?? "event streams";
  const byUser = new Map<string, number>();
  let total = 0;
  return {
    acquire(userId) {
      const mine = byUser.get(userId) ?? 0;
      if (mine >= limits.perUser) {
        throw new ServerError(code, `At most ${limits.perUser} ${noun} may be open at once per user; close one first`, { limit: limits.perUser, scope: "user" });
      }
      if (total >= limits.total) throw new ServerError(code, `The server has as many ${noun} open as it takes; try again later`, { scope: "server" });
      byUser.set(userId, mine + 1);
      total += 1;
      let held = true;
      return () => {
        if (!held) return;
        held = false;
        total -= 1;
        const left = (byUser.get(userId) ?? 1) - 1;
        if (left === 0) byUser.delete(userId);
        else byUser.set(userId, left);
      };
    },
    open(userId) {
      return userId === undefined ? total : (byUser.get(userId) ?? 0);
    },
  };
}
