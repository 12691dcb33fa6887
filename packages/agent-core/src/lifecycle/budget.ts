import { ConfigError, KeenError } from "../errors.js";
import type { ModelPrice } from "./pricing.js";
import { totalInputTokens, type Model, type ModelRequest, type Usage } from "../model/model.js";
import { estimateRequestTokens } from "../run/context.js";

/** Raised inside an agent when the run's token budget is spent (or the next request would overrun it). */
export class BudgetSpent extends KeenError {
  constructor(budget: string) {
    super("token_budget", `The run's budget of ${budget} is spent`);
  }
}

function dollars(price: ModelPrice, usage: Usage): number {
  return (usage.inputTokens * price.input + usage.outputTokens * price.output + usage.cacheCreationInputTokens * price.cacheWrite + usage.cacheReadInputTokens * price.cacheRead) / 1_000_000;
}

/**
 * The run's token budget: counts every response's tokens and refuses a request whose estimated
 * input would overrun what is left, so the budget is checked before sending, not only after.
 */
export class TokenBudget {
  private stopped = false;
  /** US dollars spent so far (when the model's price is known). */
  spentUsd = 0;
  /** Which limit stopped the run. */
  stoppedBy: "tokenBudget" | "costBudget" | undefined;

  constructor(
    readonly limit: number | undefined,
    /** Tokens spent so far (carried across a resume). */
    public spent: number,
    /** Called once, when the budget stops the run. */
    private readonly onStop: (limit: "tokenBudget" | "costBudget", detail: string) => void,
    /** A dollar limit, priced with `price` (keen's table for the run's model). */
    readonly usd?: { limit: number | undefined; price: ModelPrice | undefined; spentBefore: Usage },
  ) {
    if (usd?.limit !== undefined && !usd.price) throw new ConfigError("maxBudgetUsd needs a model whose price keen knows");
    if (usd?.price) this.spentUsd = dollars(usd.price, usd.spentBefore);
  }

  get isSpent(): boolean {
    return this.stopped;
  }

  count(usage: Usage): void {
    this.spent += totalInputTokens(usage) + usage.outputTokens;
    if (this.usd?.price) this.spentUsd += dollars(this.usd.price, usage);
    if (this.limit !== undefined && this.spent >= this.limit) this.stop("tokenBudget", `${this.spent} tokens used of a budget of ${this.limit}; stopping every agent`);
    const usdLimit = this.usd?.limit;
    if (usdLimit !== undefined && this.spentUsd >= usdLimit) this.stop("costBudget", `$${this.spentUsd.toFixed(4)} spent of a budget of $${usdLimit}; stopping every agent`);
  }

  /** Throws `BudgetSpent` when the request's estimated input does not fit in what is left. */
  checkBefore(request: ModelRequest): void {
    const usdLimit = this.usd?.limit;
    if (this.limit === undefined && usdLimit === undefined) return;
    if (this.stopped) throw new BudgetSpent(this.stoppedBy === "costBudget" ? `$${usdLimit}` : `${this.limit} tokens`);
    const estimate = estimateRequestTokens(request);
    if (this.limit !== undefined && this.spent + estimate > this.limit) {
      this.stop("tokenBudget", `${this.spent} tokens used of a budget of ${this.limit}; the next request needs about ${estimate} more; stopping every agent`);
      throw new BudgetSpent(`${this.limit} tokens`);
    }
    if (usdLimit !== undefined && this.usd?.price) {
      const next = (estimate * this.usd.price.input) / 1_000_000;
      if (this.spentUsd + next > usdLimit) {
        this.stop("costBudget", `$${this.spentUsd.toFixed(4)} spent of a budget of $${usdLimit}; the next request costs about $${next.toFixed(4)} more; stopping every agent`);
        throw new BudgetSpent(`$${usdLimit}`);
      }
    }
  }

  /** The model with the budget checked before every request. */
  guard(model: Model): Model {
    if (this.limit === undefined && this.usd?.limit === undefined) return model;
    const budget = this;
    const guarded: Model = {
      id: model.id,
      contextWindow: model.contextWindow,
      stream(request, options) {
        budget.checkBefore(request);
        return model.stream(request, options);
      },
      ...(model.countTokens ? { countTokens: (request: ModelRequest, options?: Parameters<Model["stream"]>[1]) => model.countTokens!(request, options) } : {}),
    };
    return guarded;
  }

  private stop(limit: "tokenBudget" | "costBudget", detail: string): void {
    if (this.stopped) return;
    this.stopped = true;
    this.stoppedBy = limit;
    this.onStop(limit, detail);
  }
}
