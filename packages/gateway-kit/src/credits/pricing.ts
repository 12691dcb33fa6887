import * as z from "zod";
import { LedgerInputError, UnknownModelError } from "./errors.js";
import type { MicroCredits } from "../money.js";
import { parseOptions } from "../options.js";

/**
 * Token counts of one model call or a whole run. The same shape as agent-core's `Usage`,
 * declared here so gateway-kit does not depend on agent-core.
 */
export interface TokenUsage {
  inputTokens: number;
  outputTokens: number;
  /** Tokens written to the prompt cache. */
  cacheCreationInputTokens: number;
  /** Tokens read from the prompt cache. */
  cacheReadInputTokens: number;
}

/** Prices of one model in micro-credits per million tokens (integers, so charges stay exact). */
export interface ModelPrice {
  input: number;
  output: number;
  cacheWrite: number;
  cacheRead: number;
}

const M = 1_000_000;
const price = (input: number, output: number, cacheWrite: number, cacheRead: number): ModelPrice => ({
  input: Math.round(input * M),
  output: Math.round(output * M),
  cacheWrite: Math.round(cacheWrite * M),
  cacheRead: Math.round(cacheRead * M),
});

/**
 * Anthropic list prices in USD per million tokens, read as 1 credit = 1 USD; cache writes at the
 * 5-minute rate. Dated snapshots (`claude-sonnet-4-5-20250929`) resolve to their family entry.
 * A host with other models, other rates or another credit value passes its own table.
 */
export const DEFAULT_MODEL_PRICES: Readonly<Record<string, ModelPrice>> = Object.freeze({
  "claude-opus-4-5": price(5, 25, 6.25, 0.5),
  "claude-opus-4-1": price(15, 75, 18.75, 1.5),
  "claude-opus-4": price(15, 75, 18.75, 1.5),
  "claude-sonnet-4-5": price(3, 15, 3.75, 0.3),
  "claude-sonnet-4": price(3, 15, 3.75, 0.3),
  "claude-3-7-sonnet": price(3, 15, 3.75, 0.3),
  "claude-haiku-4-5": price(1, 5, 1.25, 0.1),
  "claude-3-5-haiku": price(0.8, 4, 1, 0.08),
});

const PriceInt = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const ModelPriceSchema = z.object({ input: PriceInt, output: PriceInt, cacheWrite: PriceInt, cacheRead: PriceInt });
const Count = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const UsageSchema = z.object({
  inputTokens: Count,
  outputTokens: Count,
  cacheCreationInputTokens: Count,
  cacheReadInputTokens: Count,
});
const EstimateSchema = z.object({ inputTokens: Count, maxOutputTokens: Count });

export const PriceListOptions = z.object({
  /** Prices to add or override, keyed by model id. */
  prices: z.record(z.string().min(1), ModelPriceSchema).optional(),
  /** Drop the default table and use only `prices`. Default false. */
  replaceDefaults: z.boolean().optional(),
  /** Markup in basis points applied to the whole charge: 2000 = +20%. Default 0. */
  markupBps: z.number().int().min(0).max(1_000_000).optional(),
});
export type PriceListOptions = z.input<typeof PriceListOptions>;

export interface PriceList {
  /** The exact charge for a usage record, in micro-credits, markup included. */
  priceUsage(model: string, usage: TokenUsage): MicroCredits;
  /**
   * An upper bound for a call before it runs: every prompt token at the dearer of the input and
   * cache-write rates, and the whole output budget. Useful as a reservation amount.
   */
  maxCost(model: string, estimate: { inputTokens: number; maxOutputTokens: number }): MicroCredits;
  /** The price entry a model id resolves to. Throws `UnknownModelError`. */
  priceOf(model: string): ModelPrice & { model: string };
  readonly markupBps: number;
}

/**
 * Builds a price list. Charges are computed in integer arithmetic as
 * `ceil(Σ tokens × price × (10000 + markupBps) / (10^6 × 10^4))`: one rounding, up, at the
 * very end, so no component drifts and a charge is never below the true price.
 *
 * @example
 * const prices = createPriceList({ markupBps: 2000, prices: { "my-local-model": { input: 0, output: 100_000, cacheWrite: 0, cacheRead: 0 } } });
 * prices.priceUsage("claude-sonnet-4-5", { inputTokens: 1200, outputTokens: 350, cacheCreationInputTokens: 0, cacheReadInputTokens: 8000 });
 * // => 13_500 micro-credits: 3,600 input + 5,250 output + 2,400 cache read = 11,250, plus 20%
 */
export function createPriceList(options: PriceListOptions = {}): PriceList {
  const { prices = {}, replaceDefaults = false, markupBps = 0 } = parseOptions(PriceListOptions, options, "price list");
  const table = new Map<string, ModelPrice>(Object.entries(replaceDefaults ? prices : { ...DEFAULT_MODEL_PRICES, ...prices }));
  // Longest first, so "claude-opus-4-1-2025..." finds "claude-opus-4-1" before "claude-opus-4".
  const keys = [...table.keys()].sort((a, b) => b.length - a.length);

  const resolve = (model: string): string | undefined => {
    if (table.has(model)) return model;
    const bare = model.includes(":") ? model.slice(model.indexOf(":") + 1) : model;
    if (table.has(bare)) return bare;
    return keys.find((key) => bare.startsWith(`${key}-`));
  };
  const priceOf = (model: string) => {
    // The model name usually comes from a request body: anything but a sane string is the client's error.
    if (typeof model !== "string" || model.length === 0 || model.length > 200) throw new LedgerInputError(`Invalid model ${JSON.stringify(typeof model === "string" ? model.slice(0, 50) : typeof model)}`);
    const key = resolve(model);
    if (key === undefined) throw new UnknownModelError(model);
    return { model: key, ...table.get(key)! };
  };
  const charge = (p: ModelPrice, tokens: [number, keyof ModelPrice][]): MicroCredits => {
    let numerator = 0n;
    for (const [count, kind] of tokens) numerator += BigInt(count) * BigInt(p[kind]);
    numerator *= BigInt(10_000 + markupBps);
    const denominator = BigInt(M) * 10_000n;
    const result = (numerator + denominator - 1n) / denominator;
    if (result > BigInt(Number.MAX_SAFE_INTEGER)) throw new LedgerInputError(`The charge exceeds ${Number.MAX_SAFE_INTEGER} micro-credits`);
    return Number(result);
  };

  return {
    markupBps,
    priceOf,
    priceUsage(model, usage) {
      const u = UsageSchema.safeParse(usage);
      if (!u.success) throw new LedgerInputError(`Invalid usage: ${u.error.message}`, u.error.issues);
      return charge(priceOf(model), [
        [u.data.inputTokens, "input"],
        [u.data.outputTokens, "output"],
        [u.data.cacheCreationInputTokens, "cacheWrite"],
        [u.data.cacheReadInputTokens, "cacheRead"],
      ]);
    },
    maxCost(model, estimate) {
      const e = EstimateSchema.safeParse(estimate);
      if (!e.success) throw new LedgerInputError(`Invalid estimate: ${e.error.message}`, e.error.issues);
      const p = priceOf(model);
      const promptRate: keyof ModelPrice = p.cacheWrite > p.input ? "cacheWrite" : "input";
      return charge(p, [
        [e.data.inputTokens, promptRate],
        [e.data.maxOutputTokens, "output"],
      ]);
    },
  };
}

const defaultPriceList = createPriceList();

/**
 * Prices a usage record with the default table and no markup (or with the given price list).
 *
 * @example
 * priceUsage("claude-haiku-4-5", { inputTokens: 1, outputTokens: 0, cacheCreationInputTokens: 0, cacheReadInputTokens: 0 }); // => 1
 */
export function priceUsage(model: string, usage: TokenUsage, priceList: PriceList = defaultPriceList): MicroCredits {
  return priceList.priceUsage(model, usage);
}
