import type { Usage } from "../model/model.js";

/** US dollars per million tokens of each kind. */
export interface ModelPrice {
  input: number;
  output: number;
  /** Writing the prompt cache (5-minute entries). */
  cacheWrite: number;
  cacheRead: number;
}

/**
 * The one price table keen uses for `costUsd` and `maxBudgetUsd`: list prices per million
 * tokens by model family, matched against the model id (first match wins). Cache writes cost
 * 1.25× input and cache reads 0.1× input.
 */
export const MODEL_PRICES: ReadonlyArray<{ match: RegExp; price: ModelPrice }> = [
  { match: /opus-4-(0|1)|opus-4$|claude-3-opus/, price: { input: 15, output: 75, cacheWrite: 18.75, cacheRead: 1.5 } },
  { match: /opus/, price: { input: 5, output: 25, cacheWrite: 6.25, cacheRead: 0.5 } },
  { match: /sonnet/, price: { input: 3, output: 15, cacheWrite: 3.75, cacheRead: 0.3 } },
  { match: /haiku-3-5|3-5-haiku/, price: { input: 0.8, output: 4, cacheWrite: 1, cacheRead: 0.08 } },
  { match: /haiku-3|3-haiku/, price: { input: 0.25, output: 1.25, cacheWrite: 0.3, cacheRead: 0.03 } },
  { match: /haiku/, price: { input: 1, output: 5, cacheWrite: 1.25, cacheRead: 0.1 } },
];

/** The price of a model, or undefined when the table does not know it. */
export function modelPrice(modelId: string): ModelPrice | undefined {
  return MODEL_PRICES.find((entry) => entry.match.test(modelId))?.price;
}

/**
 * What `usage` costs on `modelId` in US dollars, or undefined for a model the table does not know.
 *
 * @example
 * costUsd("claude-sonnet-4-5", { inputTokens: 1_000_000, outputTokens: 0, cacheCreationInputTokens: 0, cacheReadInputTokens: 0 }); // 3
 */
export function costUsd(modelId: string, usage: Usage): number | undefined {
  const price = modelPrice(modelId);
  if (!price) return undefined;
  const dollars =
    (usage.inputTokens * price.input + usage.outputTokens * price.output + usage.cacheCreationInputTokens * price.cacheWrite + usage.cacheReadInputTokens * price.cacheRead) /
    1_000_000;
  return Math.round(dollars * 1e6) / 1e6;
}
