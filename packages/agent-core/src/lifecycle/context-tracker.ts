import type { Model } from "../model/model.js";
import { ContextTracker, type ContextSettings } from "../run/context.js";

/**
 * The tracker for one agent's context, or undefined when pruning is off. Throws `ConfigError` on
 * bad settings, including a `maxTokens` that leaves no room in the window.
 */
export function contextTracker(options: {
  model: Model;
  contextWindow?: number;
  context?: Omit<ContextSettings, "contextWindow"> | false;
  maxTokens?: number;
}): ContextTracker | undefined {
  const { model, contextWindow, context: settings, maxTokens = 8192 } = options;
  if (settings === false) return undefined;
  const tracker = new ContextTracker(model, { ...settings, ...(contextWindow !== undefined ? { contextWindow } : {}) });
  tracker.checkMaxTokens(maxTokens);
  return tracker;
}
