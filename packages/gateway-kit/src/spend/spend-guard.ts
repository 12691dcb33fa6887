import { randomUUID } from "node:crypto";
import type { Middleware, ParameterizedContext } from "koa";
import { budgetScopesOf } from "../budgets/index.js";
import type { BudgetScope } from "../budgets/index.js";
import type { WalletOwner } from "../credits/index.js";
import { ConfigError } from "../errors.js";
import { HttpError } from "../http-error.js";
import { SpendClosedError, type Spend, type SpendHold } from "./types.js";

declare module "koa" {
  interface DefaultState {
    /** The credits and budget holds `spendGuard` took for this request's work: settle or release with `spend.handle`. */
    spend?: SpendHold;
  }
}

type Ctx = ParameterizedContext;

export interface SpendGuardOptions {
  /** From `createSpend`. */
  spend: Spend;
  /** Most the request's work may cost, in micro-credits (e.g. `prices.maxCost(...)`). */
  estimate: (ctx: Ctx) => number | Promise<number>;
  /** The wallet to hold in. Default: the principal's team wallet when it has a team, else its user wallet. */
  wallet?: (ctx: Ctx) => string | WalletOwner | Promise<string | WalletOwner>;
  /** The budgets that apply. Default: the principal's user and team budgets (`budgetScopesOf`). */
  scopes?: (ctx: Ctx) => BudgetScope[] | Promise<BudgetScope[]>;
  /** How long the hold lasts if nobody settles or releases it. Default the spend service's. */
  ttlMs?: number;
  /**
   * The hold's idempotency key. Default: the principal and the request's `Idempotency-Key` header
   * when present (a retried request gets its first hold back), else a fresh id.
   */
  idempotencyKey?: (ctx: Ctx) => string;
  /** An opaque reference stored with the hold (e.g. the run id the route will use). */
  reference?: (ctx: Ctx) => string | undefined;
  /**
   * What a request whose idempotency key already holds an open spend gets. `"reject"` (default):
   * 409 `idempotency_replayed` naming the first hold's handle, and the route does not run, so the
   * work the hold pays for is started once however often the request is repeated. `"run"`: the
   * route runs again with the same hold (`ctx.state.spend.replayed` is true); only for routes that
   * start the work at most once per handle themselves, since a spend is settled once.
   */
  replays?: "reject" | "run";
}

/** A request repeated an idempotency key whose hold is still open: its work was already started. Renders as 409. */
export class SpendReplayedError extends HttpError {
  constructor(readonly handle: string) {
    super(409, "idempotency_replayed", "A request with this Idempotency-Key already holds credits for its work; its handle names the hold", { handle, status: "open" });
    this.name = "SpendReplayedError";
  }
}

/**
 * The one guard for work that costs credits: before the route runs it reserves the request's
 * estimate in the wallet and in every applicable budget at once (`spend.reserve`) and puts the
 * hold on `ctx.state.spend`. A wallet that cannot cover it answers 402 `insufficient_credits`; a
 * budget that cannot, 402 `budget_exceeded` naming the budget; then nothing is held. If the route
 * throws, the hold is released. If it succeeds, the hold stays open for whoever runs the work to
 * `spend.settle(handle, actual)` (or `release`); `spend.sweepExpired()` frees it otherwise. A
 * repeat of a request (same principal and `Idempotency-Key`) whose hold is open gets 409
 * `idempotency_replayed` with the handle and does not run the route; once closed, 409 `spend_closed`.
 *
 * @example
 * router.post("/v1/runs", authenticate({ service }),
 *   spendGuard({ spend, estimate: (ctx) => prices.maxCost(ctx.request.body.model, { inputTokens: 50_000, maxOutputTokens: 16_000 }) }),
 *   async (ctx) => { await queue.add({ spend: ctx.state.spend!.handle }); ctx.status = 202; });
 */
export function spendGuard(options: SpendGuardOptions): Middleware {
  if (typeof options?.spend?.reserve !== "function") throw new ConfigError("spendGuard needs spend: the service createSpend returns");
  if (typeof options.estimate !== "function") throw new ConfigError("spendGuard needs estimate: a function of the request");
  for (const name of ["wallet", "scopes", "idempotencyKey", "reference"] as const) {
    if (options[name] !== undefined && typeof options[name] !== "function") throw new ConfigError(`spendGuard: ${name} must be a function of the request`);
  }
  if (options.replays !== undefined && options.replays !== "reject" && options.replays !== "run") throw new ConfigError('spendGuard: replays must be "reject" or "run"');
  if (options.ttlMs !== undefined && (!Number.isSafeInteger(options.ttlMs) || options.ttlMs <= 0)) throw new ConfigError("spendGuard: ttlMs must be a positive whole number of milliseconds");
  const { spend, estimate } = options;
  const principalOf = (ctx: Ctx) => {
    const principal = ctx.state.principal;
    if (!principal) throw new HttpError(401, "unauthenticated", "spendGuard needs an authenticated principal");
    return principal;
  };
  const walletOf =
    options.wallet ??
    ((ctx: Ctx): WalletOwner => {
      const principal = principalOf(ctx);
      return principal.teamId ? { teamId: principal.teamId } : { userId: principal.userId };
    });
  const scopesOf = options.scopes ?? ((ctx: Ctx) => budgetScopesOf(principalOf(ctx)));
  const keyOf =
    options.idempotencyKey ??
    ((ctx: Ctx) => {
      const header = ctx.get("idempotency-key");
      const who = ctx.state.principal?.userId ?? "anonymous";
      return header ? `request:${who}:${header}` : `request:${randomUUID()}`;
    });

  return async (ctx, next) => {
    const amount = await estimate(ctx);
    // The estimate usually comes from the request body: junk there is the client's error.
    if (typeof amount !== "number" || !Number.isSafeInteger(amount) || amount <= 0) {
      throw new HttpError(400, "invalid_estimate", "The request's estimated cost is not a positive whole number of micro-credits");
    }
    const reference = options.reference?.(ctx);
    const hold = await spend.reserve({
      wallet: await walletOf(ctx),
      estimate: amount,
      idempotencyKey: keyOf(ctx),
      scopes: await scopesOf(ctx),
      ...(options.ttlMs !== undefined ? { ttlMs: options.ttlMs } : {}),
      ...(reference !== undefined ? { reference } : {}),
    });
    // A retried request whose first attempt already finished gets its closed spend back.
    if (hold.status !== "open") throw new SpendClosedError(hold.handle, hold.status);
    // A spend is settled once, so a second run of the route on the same hold would be work nobody
    // pays for: the same request sent 200 times at once must start one run, not 200.
    if (hold.replayed && options.replays !== "run") throw new SpendReplayedError(hold.handle);
    ctx.state.spend = hold;
    try {
      await next();
    } catch (error) {
      // Only the request that took the hold releases it: a retry that reused the key must not pull
      // the credits from under the first request's work. If the release fails too, the sweep frees it.
      if (!hold.replayed) await spend.release(hold).catch(() => undefined);
      throw error;
    }
  };
}
