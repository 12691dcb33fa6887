import { randomUUID } from "node:crypto";
import type { Middleware, ParameterizedContext } from "koa";
import * as z from "zod";
import { HttpError } from "../http-error.js";
import { functionOption, parseOptions } from "../options.js";
import type { RunSlot, RunSlots } from "./run-slots.js";

declare module "koa" {
  interface DefaultState {
    /** The run slot `concurrencyLimit` took for this request. */
    runSlot?: RunSlot;
  }
}

type Ctx = ParameterizedContext;

const ConcurrencyLimitOptions = z
  .object({
    slots: z.custom<RunSlots>((v) => typeof (v as RunSlots)?.acquire === "function", "slots must come from createRunSlots"),
    /** The run's id. Default a random UUID; the route finds it on `ctx.state.runSlot.runId`. */
    runId: functionOption<(ctx: Ctx) => string>().optional(),
    /**
     * `response`: the slot is held (and kept alive) while the response is being sent, e.g. a
     * run streamed over SSE, and released when it ends or the client goes away.
     * `manual`: the slot outlives a successful request (a queued run); the host releases it
     * when the run ends. A request that fails releases it at once.
     */
    hold: z.enum(["response", "manual"]).default("response"),
  })
  .strict();
export type ConcurrencyLimitOptions = z.input<typeof ConcurrencyLimitOptions>;

/**
 * Admits a request only when its user and team have a free run slot; otherwise 429
 * `too_many_concurrent_runs` naming the scope, the limit and the active count.
 *
 * @example
 * const slots = createRunSlots({ store: createKyselyRunSlotStore(db), limits: { user: 2, team: 10 } });
 * router.post("/v1/runs/stream", authenticate({ service }), concurrencyLimit({ slots }), streamRun);
 * router.post("/v1/runs", authenticate({ service }), concurrencyLimit({ slots, hold: "manual" }), enqueueRun);
 */
export function concurrencyLimit(input: ConcurrencyLimitOptions): Middleware {
  const options = parseOptions(ConcurrencyLimitOptions, input, "concurrencyLimit");
  return async (ctx, next) => {
    const principal = ctx.state.principal;
    if (!principal) throw new HttpError(401, "unauthenticated", "Authentication required");
    const runId = options.runId ? options.runId(ctx) : randomUUID();
    const slot = await options.slots.acquire({ runId, userId: principal.userId, teamId: principal.teamId });
    ctx.state.runSlot = slot;
    if (options.hold === "manual") {
      try {
        await next();
      } catch (error) {
        // The run never started: give the slot back now rather than when its lease lapses.
        await slot.release().catch(() => undefined);
        throw error;
      }
      return;
    }
    const stop = slot.keepAlive();
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      stop();
      // Releasing is best effort: a lost release only delays the slot until its lease lapses.
      slot.release().catch(() => undefined);
    };
    ctx.res.once("close", release);
    try {
      await next();
    } catch (error) {
      release();
      throw error;
    }
  };
}
