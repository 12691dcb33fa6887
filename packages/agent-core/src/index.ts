export * from "./errors.js";
export * from "./events.js";
export * from "./model/model.js";
export { anthropic, AnthropicModel, type AnthropicModelOptions } from "./model/anthropic.js";
export { defaultRetryPolicy, retryDelay, mayRetry, parseRetryAfter, resolveRetryPolicy, simulatedClock, type RetryPolicy } from "./model/retry.js";
export * from "./tools/index.js";
export * from "./workspace/index.js";
export { EventStream, type EventReader, type EventStreamOptions } from "./run/event-stream.js";
export { MemoryEventLog, NdjsonEventLog, EventsEvictedError, type EventLog } from "./run/event-log.js";
export { runConversation, capToolResults, type ConversationOptions, type ConversationResult, type RequestEstimate } from "./run/conversation.js";
export {
  ContextTracker,
  ContextSettings,
  pruneConversation,
  conversationProblem,
  estimateMessageTokens,
  estimateRequestTokens,
  COMPACTED_SUMMARY_HEADER,
  type ContextPruneReport,
  type PruneOptions,
  type PruneResult,
} from "./run/context.js";
export { startRun, ROOT_AGENT_ID, type Run, type RunOptions, type RunResult } from "./run/start-run.js";
export * from "./lifecycle/index.js";
