// What `@anthropic-ai/sdk` is inside the `keen` bundle (see tsup.config.ts): the SDK's base client
// with the Messages API only. keen calls nothing else (`messages.stream`, `messages.countTokens`,
// the error classes), and the full client pulls in every API of the SDK, which made a start
// compile and run about four times the code (1.4 MB instead of 0.35 MB). Library users of
// @keen/agent-core import the SDK as installed.
import { BaseAnthropic } from "@anthropic-ai/sdk/client";
import { Messages } from "@anthropic-ai/sdk/resources/messages/messages";

export { APIError, APIUserAbortError } from "@anthropic-ai/sdk/core/error";

/** The Messages API client; its static error classes (`Anthropic.AuthenticationError`, …) are the SDK's own. */
export default class Anthropic extends BaseAnthropic {
  messages: Messages = new Messages(this);
}
