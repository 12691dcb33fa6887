import { randomUUID } from "node:crypto";
import type { Middleware, ParameterizedContext } from "koa";
import { z } from "zod";
import { HttpError } from "../http-error.js";
import { functionOption, parseOptions } from "../options.js";
import { ReservationClosedError } from "./errors.js";
import type { Ledger, Reservation } from "./ledger.js";

declare module "koa" {
  interface DefaultState {
    /** The credits `creditGuard` holds for this request's run. */
    reservation?: Reservation;
  }
}

type Ctx = ParameterizedContext;

const CreditGuardOptions = z
  .object({
    ledger: z.custom<Ledger>((v) => typeof (v as Ledger)?.reserve === "function", "ledger must come from createKyselyLedger"),
    /** Most the request may spend, in micro-credits (e.g. `prices.maxCost(...)`). */
    estimate: functionOption<(ctx: Ctx) => number | Promise<number>>(),
    /** The wallet to draw from. Default: the principal's team wallet when it has a team, else its user wallet. */
    account: functionOption<(ctx: Ctx) => string | Promise<string>>().optional(),
    /** How long the hold lasts if nobody settles or releases it. Default one hour. */
    ttlMs: z.number().int().positive().optional(),
    /**
     * The reservation's idempotency key. Default: the principal and the request's
     * `Idempotency-Key` header when present (so a retried request reuses its hold), else a fresh id.
     */
    idempotencyKey: functionOption<(ctx: Ctx) => string>().optional(),
  })
  .strict();
export type CreditGuardOptions = z.input<typeof CreditGuardOptions>;

/**
 * Reserves the request's estimated cost before the route runs and puts the reservation on
 * `ctx.state.reservation`; a wallet that cannot cover it gets 402 `insufficient_credits` with the
 * available amount. When the route throws, the hold is released. When it succeeds, the hold stays
 * open for whoever runs the work to `settle` (or `release`) it; the sweeper frees it otherwise.
 *
 * @example
 * router.post("/v1/runs", authenticate({ service }),
 *   creditGuard({ ledger, estimate: (ctx) => prices.maxCost(ctx.request.body.model, { inputTokens: 50_000, maxOutputTokens: 16_000 }) }),
 *   async (ctx) => { await queue.add({ reservationId: ctx.state.reservation!.id }); ctx.status = 202; });
 */
export function creditGuard(input: CreditGuardOptions): Middleware {
  const options = parseOptions(CreditGuardOptions, input, "creditGuard");
  const { ledger, estimate, ttlMs = 3_600_000 } = options;
  const account =
    options.account ??
    (async (ctx: Ctx) => {
      const principal = ctx.state.principal;
      if (!principal) throw new HttpError(401, "unauthenticated", "creditGuard needs an authenticated principal");
      return (await ledger.openWallet(principal.teamId ? { teamId: principal.teamId } : { userId: principal.userId })).id;
    });
  const keyOf =
    options.idempotencyKey ??
    ((ctx: Ctx) => {
      const header = ctx.get("idempotency-key");
      const who = ctx.state.principal?.userId ?? "anonymous";
      return header ? `request:${who}:${header}` : `request:${randomUUID()}`;
    });

  return async (ctx, next) => {
    const amount = await estimate(ctx);
    if (!Number.isSafeInteger(amount) || amount <= 0) {
      throw new HttpError(400, "invalid_estimate", "The request's estimated cost is not a positive whole number of micro-credits");
    }
    const reservation = await ledger.reserve({ account: await account(ctx), amount, idempotencyKey: keyOf(ctx), ttlMs });
    // A retried request whose first attempt already finished gets its closed reservation back.
    if (reservation.status !== "open") throw new ReservationClosedError(reservation.id, reservation.status);
    ctx.state.reservation = reservation;
    try {
      await next();
    } catch (error) {
      // Only the request that created the hold releases it: a retry that reused the key must not
      // pull the credits from under the first request's run. If the release fails too, the
      // sweeper frees the hold when it expires.
      if (!reservation.replayed) await ledger.release(reservation.id).catch(() => undefined);
      throw error;
    }
  };
}
