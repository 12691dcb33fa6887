import { describe, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import { LedgerInputError, UnknownModelError } from "./errors.js";
import { createPriceList, DEFAULT_MODEL_PRICES, priceUsage, type TokenUsage } from "./pricing.js";
import { errorStatus } from "../http-error.js";

/** A domain error as the HTTP edge answers it: its fields plus the status from the code table. */
const atEdge = (error: unknown) => ({ ...(error as object), message: (error as Error).message, status: errorStatus(error) });

const usage = (u: Partial<TokenUsage>): TokenUsage => ({ inputTokens: 0, outputTokens: 0, cacheCreationInputTokens: 0, cacheReadInputTokens: 0, ...u });

describe("pricing", () => {
  it("prices every usage field at its own rate", () => {
    // Sonnet 4.5: $3 in, $15 out, $3.75 cache write, $0.30 cache read per million tokens.
    expect(priceUsage("claude-sonnet-4-5", usage({ inputTokens: 1_000_000 }))).toBe(3_000_000);
    expect(priceUsage("claude-sonnet-4-5", usage({ outputTokens: 1_000_000 }))).toBe(15_000_000);
    expect(priceUsage("claude-sonnet-4-5", usage({ cacheCreationInputTokens: 1_000_000 }))).toBe(3_750_000);
    expect(priceUsage("claude-sonnet-4-5", usage({ cacheReadInputTokens: 1_000_000 }))).toBe(300_000);
    expect(priceUsage("claude-sonnet-4-5", usage({ inputTokens: 1200, outputTokens: 350, cacheReadInputTokens: 8000 }))).toBe(11_250);
  });

  it("rounds up once at the end, not per component", () => {
    // Haiku 4.5 cache reads cost 0.1 micro-credits a token: 3 tokens = 0.3 -> 1; per-component rounding of
    // three 1-token reads would give 3.
    expect(priceUsage("claude-haiku-4-5", usage({ cacheReadInputTokens: 3 }))).toBe(1);
    expect(priceUsage("claude-haiku-4-5", usage({ cacheReadInputTokens: 10 }))).toBe(1);
    expect(priceUsage("claude-haiku-4-5", usage({ cacheReadInputTokens: 11 }))).toBe(2);
    // 0.08 µc/token (3.5 Haiku cache read) + 0.8 µc/token input: 5 + 5 tokens = 0.4 + 4 = 4.4 -> 5.
    expect(priceUsage("claude-3-5-haiku", usage({ cacheReadInputTokens: 5, inputTokens: 5 }))).toBe(5);
    expect(priceUsage("claude-sonnet-4-5", usage({}))).toBe(0);
  });

  it("matches a brute-force rational sum on many random usages, markup included", () => {
    const list = createPriceList({ markupBps: 1_750 });
    let seed = 7;
    const rand = (max: number) => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed % max;
    };
    const models = Object.keys(DEFAULT_MODEL_PRICES);
    for (let i = 0; i < 2_000; i++) {
      const model = models[rand(models.length)]!;
      const u = usage({ inputTokens: rand(500_000), outputTokens: rand(64_000), cacheCreationInputTokens: rand(200_000), cacheReadInputTokens: rand(2_000_000) });
      const p = DEFAULT_MODEL_PRICES[model]!;
      const exact =
        (BigInt(u.inputTokens) * BigInt(p.input) +
          BigInt(u.outputTokens) * BigInt(p.output) +
          BigInt(u.cacheCreationInputTokens) * BigInt(p.cacheWrite) +
          BigInt(u.cacheReadInputTokens) * BigInt(p.cacheRead)) *
        11_750n;
      const charged = BigInt(list.priceUsage(model, u));
      const scale = 1_000_000n * 10_000n;
      // The smallest integer not below the exact value.
      expect(charged * scale >= exact).toBe(true);
      expect((charged - 1n) * scale < exact).toBe(true);
    }
  });

  it("applies the markup to the total", () => {
    const list = createPriceList({ markupBps: 2_000 });
    expect(list.priceUsage("claude-sonnet-4-5", usage({ inputTokens: 1200, outputTokens: 350, cacheReadInputTokens: 8000 }))).toBe(13_500);
    expect(list.priceUsage("claude-haiku-4-5", usage({ cacheReadInputTokens: 1 }))).toBe(1);
  });

  it("resolves dated snapshots and provider prefixes to the longest family entry", () => {
    const list = createPriceList();
    expect(list.priceOf("claude-sonnet-4-5-20250929").model).toBe("claude-sonnet-4-5");
    expect(list.priceOf("anthropic:claude-opus-4-1-20250805").model).toBe("claude-opus-4-1");
    expect(list.priceOf("claude-opus-4-20250514").model).toBe("claude-opus-4");
    expect(list.priceOf("claude-opus-4-5").input).toBe(5_000_000);
  });

  it("lets the host add, override or replace prices", () => {
    const list = createPriceList({
      prices: { "claude-sonnet-4-5": { input: 1, output: 2, cacheWrite: 3, cacheRead: 4 }, "local-llama": { input: 0, output: 50_000, cacheWrite: 0, cacheRead: 0 } },
    });
    expect(list.priceUsage("claude-sonnet-4-5", usage({ inputTokens: 1_000_000, outputTokens: 1_000_000 }))).toBe(3);
    expect(list.priceUsage("local-llama", usage({ inputTokens: 10_000, outputTokens: 40 }))).toBe(2);
    expect(list.priceUsage("claude-haiku-4-5", usage({ inputTokens: 1 }))).toBe(1);
    const only = createPriceList({ replaceDefaults: true, prices: { "local-llama": { input: 0, output: 0, cacheWrite: 0, cacheRead: 0 } } });
    expect(() => only.priceOf("claude-haiku-4-5")).toThrow(UnknownModelError);
    expect(() => createPriceList({ prices: { x: { input: 0.5, output: 0, cacheWrite: 0, cacheRead: 0 } } })).toThrow(ConfigError);
    expect(() => createPriceList({ markupBps: -1 })).toThrow(ConfigError);
  });

  it("refuses unknown models and malformed usage with typed errors", () => {
    const error = (() => {
      try {
        priceUsage("gpt-unknown", usage({ inputTokens: 1 }));
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(UnknownModelError);
    expect(atEdge(error)).toMatchObject({ model: "gpt-unknown", status: 422, code: "unknown_model" });
    expect(() => priceUsage("claude-sonnet-4", usage({ inputTokens: -1 }))).toThrow(LedgerInputError);
    expect(() => priceUsage("claude-sonnet-4", usage({ outputTokens: 1.5 }))).toThrow(LedgerInputError);
    expect(() => priceUsage("claude-sonnet", usage({}))).toThrow(UnknownModelError);
    // A request body's junk (no model, a number, a token count that overflows) is a 400, never a TypeError or RangeError.
    const list = createPriceList();
    for (const model of [undefined, 42, "", "x".repeat(1_000)]) {
      expect(() => list.maxCost(model as never, { inputTokens: 1, maxOutputTokens: 1 })).toThrow(LedgerInputError);
    }
    expect(() => list.maxCost("claude-opus-4", { inputTokens: Number.MAX_SAFE_INTEGER, maxOutputTokens: Number.MAX_SAFE_INTEGER })).toThrow(LedgerInputError);
  });

  it("bounds a call before it runs", () => {
    const list = createPriceList();
    // 10k prompt tokens at the cache-write rate (3.75) + 4k output at 15.
    expect(list.maxCost("claude-sonnet-4-5", { inputTokens: 10_000, maxOutputTokens: 4_000 })).toBe(37_500 + 60_000);
    const actual = list.priceUsage("claude-sonnet-4-5", usage({ inputTokens: 2_000, cacheCreationInputTokens: 3_000, cacheReadInputTokens: 5_000, outputTokens: 4_000 }));
    expect(actual).toBeLessThanOrEqual(97_500);
  });
});
