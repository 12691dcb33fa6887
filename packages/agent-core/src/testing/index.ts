/**
 * Offline testing for keen and for apps that embed it: a loopback server that speaks the
 * Anthropic Messages API, driven by a script or a policy, for use with the real SDK.
 */
export {
  startMessagesServer,
  type MessagesServer,
  type MessagesServerOptions,
  type PolicyContext,
  type RecordedRequest,
  type ReplyPolicy,
} from "./messages-server.js";
export { reply, errorTypeFor, type Fault, type ReplyBlock, type ScriptedReply } from "./replies.js";
export { estimateTokens, minCacheableTokens, CACHE_LOOKBACK_BLOCKS, CACHE_TTL_MS, type CacheUsage } from "./prompt-cache.js";
export { requestPosition, type RequestPosition } from "./request-position.js";
export { runEventLogContract, sampleEvent, type ContractTestApi } from "./event-log-contract.js";
export { createTestRepo, TEST_GIT_IDENTITY } from "../workspace/test-repo.js";
