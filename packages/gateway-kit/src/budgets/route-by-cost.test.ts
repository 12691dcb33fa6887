import { describe, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import { errorStatus } from "../http-error.js";
import { CostRouteError, createCostRouter, DEFAULT_CONTEXT_TIERS, routeByCost, tokenCost, type ContextTier, type CostPolicy } from "./route-by-cost.js";

describe("routeByCost (default policy)", () => {
  it("keeps requests that fit 200k on the standard tier and moves larger ones to the extended window", () => {
    const small = routeByCost({ estimatedInputTokens: 120_000 });
    expect(small.tier.name).toBe("standard");
    expect(small.maxOutputTokens).toBe(8_000);
    // 120k input at 3 credits/MTok + 8k output at 15 credits/MTok, in micro-credits.
    expect(small.estimatedCost).toBe(360_000 + 120_000);

    const edge = routeByCost({ estimatedInputTokens: 195_000 });
    expect(edge).toMatchObject({ tier: { name: "standard" }, maxOutputTokens: 5_000 });

    const large = routeByCost({ estimatedInputTokens: 450_000 });
    expect(large.tier.name).toBe("extended");
    expect(large.tier.params).toEqual({ betas: ["context-1m-2025-08-07"] });
    expect(large.estimatedCost).toBe(tokenCost(450_000, 6_000_000) + tokenCost(8_000, 22_500_000));
    expect(large.reason).toContain("extended context window");
  });

  it("caps output to what the budget covers, and refuses with 402 when even the minimum does not fit", () => {
    // 100k input costs 300,000; 50,000 more buys 3,333 output tokens at 15 credits/MTok.
    const capped = routeByCost({ estimatedInputTokens: 100_000, remainingBudget: 350_000 });
    expect(capped).toMatchObject({ tier: { name: "standard" }, maxOutputTokens: 3_333 });
    expect(capped.estimatedCost).toBeLessThanOrEqual(350_000);
    expect(capped.reason).toContain("output capped by budget");

    const refused = (() => {
      try {
        routeByCost({ estimatedInputTokens: 100_000, remainingBudget: 310_000 });
      } catch (e) {
        return e;
      }
    })();
    // A domain error without HTTP: the edge maps its code.
    expect(refused).toBeInstanceOf(CostRouteError);
    expect(refused).not.toHaveProperty("status");
    expect(errorStatus(refused)).toBe(402);
    expect(refused).toMatchObject({ code: "budget_insufficient", details: { remainingBudget: 310_000, minimumCost: 300_000 + tokenCost(1_024, 15_000_000) } });

    // Needs the extended window, whose premium input price the budget cannot pay.
    expect(() => routeByCost({ estimatedInputTokens: 400_000, remainingBudget: 2_000_000 })).toThrow(expect.objectContaining({ code: "budget_insufficient" }));
    expect(routeByCost({ estimatedInputTokens: 400_000, remainingBudget: 3_000_000 }).tier.name).toBe("extended");
  });

  it("refuses with context_too_large (413) when no window holds the request and invalid_route_request (400) when malformed", () => {
    const codeOf = (request: Parameters<typeof routeByCost>[0]) => {
      try {
        routeByCost(request);
      } catch (e) {
        expect(e).toBeInstanceOf(CostRouteError);
        return [(e as CostRouteError).code, errorStatus(e)];
      }
      return undefined;
    };
    expect(codeOf({ estimatedInputTokens: 999_500 })).toEqual(["context_too_large", 413]);
    expect(codeOf({ estimatedInputTokens: -1 })).toEqual(["invalid_route_request", 400]);
    expect(codeOf({ estimatedInputTokens: 1.5 })).toEqual(["invalid_route_request", 400]);
  });

  it("honours a preferred tier when it fits and is affordable", () => {
    expect(routeByCost({ estimatedInputTokens: 10_000, preferredTier: "extended" }).tier.name).toBe("extended");
    // Not affordable: falls back to the standard tier.
    const cost = tokenCost(10_000, 3_000_000) + tokenCost(8_000, 15_000_000);
    expect(routeByCost({ estimatedInputTokens: 10_000, preferredTier: "extended", remainingBudget: cost }).tier.name).toBe("standard");
  });
});

describe("createCostRouter", () => {
  const tiers: ContextTier[] = [
    { name: "small", model: "local-8b", contextWindow: 32_000, maxOutputTokens: 4_000, inputPrice: 0, outputPrice: 0 },
    ...DEFAULT_CONTEXT_TIERS,
  ];

  it("uses the host's tiers and policy, and only lets a policy pick a configured tier", () => {
    const router = createCostRouter({ tiers });
    expect(router({ estimatedInputTokens: 20_000 }).tier.name).toBe("small");
    expect(router({ estimatedInputTokens: 40_000 }).tier.name).toBe("standard");

    const cheapWhenLow: CostPolicy = (request, all) => {
      const pick = request.remainingBudget !== undefined && request.remainingBudget < 1_000_000 ? all[0]! : all[1]!;
      return { tier: pick, model: pick.model, maxOutputTokens: 1_000, estimatedCost: 0, reason: "host rule" };
    };
    const custom = createCostRouter({ tiers, policy: cheapWhenLow });
    expect(custom({ estimatedInputTokens: 1_000, remainingBudget: 10 }).model).toBe("local-8b");
    expect(custom({ estimatedInputTokens: 1_000, remainingBudget: 10_000_000 }).model).toBe("claude-sonnet-4-5");

    const rogue = createCostRouter({ policy: (_r, all) => ({ tier: { ...all[0]! }, model: "x", maxOutputTokens: 1, estimatedCost: 0, reason: "" }) });
    expect(() => rogue({ estimatedInputTokens: 1 })).toThrow(ConfigError);
    expect(() => rogue({ estimatedInputTokens: 1 })).toThrow(/unknown tier/);
  });

  it("validates its options at creation", () => {
    expect(() => createCostRouter({ tiers: [] })).toThrow(ConfigError);
    expect(() => createCostRouter({ tiers: [tiers[0]!, tiers[0]!] })).toThrow(/unique/);
    expect(() => createCostRouter({ tiers: [{ ...tiers[0]!, inputPrice: 0.5 }] })).toThrow(ConfigError);
  });

  it("rounds token costs up in integer micro-credits", () => {
    expect(tokenCost(1, 3_000_000)).toBe(3);
    expect(tokenCost(1, 1)).toBe(1);
    expect(tokenCost(0, 3_000_000)).toBe(0);
    expect(tokenCost(333_333, 3)).toBe(1);
  });
});
