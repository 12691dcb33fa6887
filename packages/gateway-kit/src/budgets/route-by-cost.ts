import * as z from "zod";
import { ConfigError, GatewayError } from "../errors.js";
import { functionOption, parseOptions } from "../options.js";
import { MicroCredits } from "../money.js";

const Tokens = z.number().int().min(0).max(100_000_000);

/** One model/context tier a request can be routed to. Prices are micro-credits per million tokens. */
export const ContextTier = z
  .object({
    name: z.string().min(1).max(100),
    model: z.string().min(1).max(200),
    /** The context window in tokens (input plus output). */
    contextWindow: Tokens.min(1),
    /** The most output tokens a request on this tier may ask for. */
    maxOutputTokens: Tokens.min(1),
    inputPrice: MicroCredits,
    outputPrice: MicroCredits,
    /** Extra request parameters for this tier, e.g. `{ betas: [...] }` for an extended window. */
    params: z.record(z.string(), z.unknown()).optional(),
  })
  .strict();
export type ContextTier = z.infer<typeof ContextTier>;

/**
 * A standard (200k) and an extended (1M) context tier of one model. Extended-context input is
 * billed at a premium, so the default policy takes it only when the request does not fit the
 * standard window. The prices assume 1 credit = 1 USD; replace the table with your own.
 */
export const DEFAULT_CONTEXT_TIERS: readonly ContextTier[] = [
  { name: "standard", model: "claude-sonnet-4-5", contextWindow: 200_000, maxOutputTokens: 64_000, inputPrice: 3_000_000, outputPrice: 15_000_000 },
  {
    name: "extended",
    model: "claude-sonnet-4-5",
    contextWindow: 1_000_000,
    maxOutputTokens: 64_000,
    inputPrice: 6_000_000,
    outputPrice: 22_500_000,
    params: { betas: ["context-1m-2025-08-07"] },
  },
];

export const CostRouteRequest = z
  .object({
    estimatedInputTokens: Tokens,
    /** Output the caller wants room for. Default 8,000, capped by the tier's `maxOutputTokens`. */
    estimatedOutputTokens: Tokens.optional(),
    /** What the caller's budget has left, in micro-credits; absent when no budget applies. */
    remainingBudget: MicroCredits.optional(),
    /** A tier the caller asks for by name; honoured when it fits and is affordable. */
    preferredTier: z.string().optional(),
    /** The fewest output tokens worth running with; below this the request is refused. Default 1,024. */
    minOutputTokens: Tokens.min(1).optional(),
  })
  .strict();
export type CostRouteRequest = z.input<typeof CostRouteRequest>;

/** Where a request goes and what it is expected to cost at most. */
export interface CostRoute {
  tier: ContextTier;
  model: string;
  /** Output tokens to allow; lower than asked when the budget only covers that much. */
  maxOutputTokens: number;
  /** Upper bound in micro-credits: all the input plus `maxOutputTokens` of output. */
  estimatedCost: number;
  reason: string;
}

/** Why a request cannot be routed. */
export type CostRouteErrorCode = "context_too_large" | "budget_insufficient" | "invalid_route_request";

/**
 * A request the cost router refuses: no context window holds it (`context_too_large`, 413 at the
 * edge), no tier fits the remaining budget (`budget_insufficient`, 402), or it is malformed
 * (`invalid_route_request`, 400). Thrown outside any request too, e.g. in a job worker.
 *
 * @example
 * try { routeByCost(request); } catch (e) { if (e instanceof CostRouteError && e.code === "budget_insufficient") offerTopUp(); }
 */
export class CostRouteError extends GatewayError {
  declare readonly code: CostRouteErrorCode;
  constructor(code: CostRouteErrorCode, message: string, details?: Record<string, unknown>) {
    super(code, message, { details });
    this.name = "CostRouteError";
  }
}

/** A replaceable routing decision. Throw a `CostRouteError` (or another coded `GatewayError`) to refuse. */
export type CostPolicy = (request: z.output<typeof CostRouteRequest>, tiers: readonly ContextTier[]) => CostRoute;

/** Micro-credits for `tokens` at `pricePerMillion`, rounded up (never undercharged). */
export function tokenCost(tokens: number, pricePerMillion: number): number {
  const product = BigInt(tokens) * BigInt(pricePerMillion);
  return Number((product + 999_999n) / 1_000_000n);
}

/**
 * The default policy: among tiers whose window holds the input plus the wanted output, take
 * the preferred tier (when the budget covers it in full) or else the first in the list (cheapest
 * first) that the budget covers.
 * When the budget covers the input but not all of the output, the output allowance shrinks
 * down to `minOutputTokens` before the request is refused. Refusals:
 * `CostRouteError`s `context_too_large` when no window fits (413 at the edge), `budget_insufficient`
 * when no tier is affordable (402).
 *
 * @example
 * defaultCostPolicy({ estimatedInputTokens: 350_000, remainingBudget: 5_000_000 }, DEFAULT_CONTEXT_TIERS).tier.name; // "extended"
 */
export const defaultCostPolicy: CostPolicy = (request, tiers) => {
  const wanted = request.estimatedOutputTokens ?? 8_000;
  const minOutput = request.minOutputTokens ?? 1_024;
  const input = request.estimatedInputTokens;
  const fitting = tiers.filter((t) => input + Math.min(minOutput, t.maxOutputTokens) <= t.contextWindow);
  if (fitting.length === 0) {
    const largest = Math.max(...tiers.map((t) => t.contextWindow));
    throw new CostRouteError("context_too_large", `The request needs about ${input} input tokens; the largest context window is ${largest}`, {
      estimatedInputTokens: input,
      largestContextWindow: largest,
    });
  }
  const ordered = request.preferredTier
    ? [...fitting.filter((t) => t.name === request.preferredTier), ...fitting.filter((t) => t.name !== request.preferredTier)]
    : fitting;
  let cheapest = Number.POSITIVE_INFINITY;
  for (const tier of ordered) {
    const room = Math.min(wanted, tier.maxOutputTokens, tier.contextWindow - input);
    const inputCost = tokenCost(input, tier.inputPrice);
    let output = room;
    if (request.remainingBudget !== undefined) {
      const left = request.remainingBudget - inputCost;
      const affordable = tier.outputPrice === 0 ? room : Math.floor((left * 1_000_000) / tier.outputPrice);
      output = Math.min(room, Math.max(0, affordable));
      cheapest = Math.min(cheapest, inputCost + tokenCost(Math.min(minOutput, room), tier.outputPrice));
      if (left < 0 || output < Math.min(minOutput, room)) continue;
      // A preference is a wish, not a need: it is not worth cutting the output for.
      if (tier.name === request.preferredTier && output < room && ordered.length > 1) continue;
    }
    const estimatedCost = inputCost + tokenCost(output, tier.outputPrice);
    const why =
      tier === tiers[0]
        ? `${tier.name} context holds ${input} input tokens`
        : tier.name === request.preferredTier
          ? `${tier.name} context was asked for`
          : `${input} input tokens need the ${tier.name} context window (${tier.contextWindow})`;
    return { tier, model: tier.model, maxOutputTokens: output, estimatedCost, reason: output < room ? `${why}; output capped by budget` : why };
  }
  throw new CostRouteError(
    "budget_insufficient",
    `The remaining budget (${request.remainingBudget} micro-credits) does not cover this request (at least ${cheapest})`,
    { remainingBudget: request.remainingBudget, minimumCost: cheapest },
  );
};

const RouterOptions = z
  .object({
    tiers: z.array(ContextTier).min(1).default([...DEFAULT_CONTEXT_TIERS]),
    policy: functionOption<CostPolicy>().default(() => defaultCostPolicy),
  })
  .strict()
  .refine((o) => new Set(o.tiers.map((t) => t.name)).size === o.tiers.length, { message: "tier names must be unique" });
export type CostRouterOptions = z.input<typeof RouterOptions>;

/**
 * A routing hook: picks the model/context tier for a request from its estimated size and the
 * caller's remaining budget. Validates the request and what the policy returns (a policy may
 * only choose one of the configured tiers). Bring your own `policy` to change the rules.
 *
 * @example
 * const routeByCost = createCostRouter();
 * const route = routeByCost({ estimatedInputTokens: 420_000, remainingBudget: ctx.state.budget?.remaining });
 * model.stream({ model: route.model, max_tokens: route.maxOutputTokens, ...route.tier.params, ... });
 */
export function createCostRouter(input: CostRouterOptions = {}): (request: CostRouteRequest) => CostRoute {
  const { tiers, policy } = parseOptions(RouterOptions, input, "cost router");
  return (raw) => {
    const request = CostRouteRequest.safeParse(raw);
    if (!request.success) throw new CostRouteError("invalid_route_request", z.prettifyError(request.error));
    const route = policy(request.data, tiers);
    if (!tiers.includes(route.tier)) throw new ConfigError(`Cost policy chose an unknown tier "${route.tier?.name}"`);
    return route;
  };
}

/**
 * `createCostRouter()` with the default tiers and policy, as a one-off call.
 *
 * @example
 * routeByCost({ estimatedInputTokens: 120_000, remainingBudget: 2_000_000 }).tier.name; // "standard"
 */
export function routeByCost(request: CostRouteRequest, options: CostRouterOptions = {}): CostRoute {
  return createCostRouter(options)(request);
}
