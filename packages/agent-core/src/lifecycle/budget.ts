import { KeenError } from "../errors.js";
import { totalInputTokens, type Model, type ModelRequest, type Usage } from "../model/model.js";
import { estimateRequestTokens } from "../run/context.js";

/** Raised inside an agent when the run's token budget is spent (or the next request would overrun it). */
export class BudgetSpent extends KeenError {
  constructor(budget: number) {
    super("token_budget", `The run's token budget of ${budget} tokens is spent`);
  }
}

/**
 * The run's token budget: counts every response's tokens and refuses a request whose estimated
 * input would overrun what is left, so the budget is checked before sending, not only after.
 */
export class TokenBudget {
  private stopped = false;

  constructor(
    readonly limit: number | undefined,
    /** Tokens spent so far (carried across a resume). */
    public spent: number,
    /** Called once, when the budget stops the run. */
    private readonly onStop: (detail: string) => void,
  ) {}

  get isSpent(): boolean {
    return this.stopped;
  }

  count(usage: Usage): void {
    this.spent += totalInputTokens(usage) + usage.outputTokens;
    if (this.limit !== undefined && this.spent >= this.limit) this.stop(`${this.spent} tokens used of a budget of ${this.limit}; stopping every agent`);
  }

  /** Throws `BudgetSpent` when the request's estimated input does not fit in what is left. */
  checkBefore(request: ModelRequest): void {
    if (this.limit === undefined) return;
    if (this.stopped) throw new BudgetSpent(this.limit);
    const estimate = estimateRequestTokens(request);
    if (this.spent + estimate > this.limit) {
      this.stop(`${this.spent} tokens used of a budget of ${this.limit}; the next request needs about ${estimate} more; stopping every agent`);
      throw new BudgetSpent(this.limit);
    }
  }

  /** The model with the budget checked before every request. */
  guard(model: Model): Model {
    if (this.limit === undefined) return model;
    const budget = this;
    return Object.assign(Object.create(model) as Model, {
      stream(request: ModelRequest, options?: Parameters<Model["stream"]>[1]) {
        budget.checkBefore(request);
        return model.stream(request, options);
      },
    });
  }

  private stop(detail: string): void {
    if (this.stopped) return;
    this.stopped = true;
    this.onStop(detail);
  }
}
