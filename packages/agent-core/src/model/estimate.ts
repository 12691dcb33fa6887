import type { ContentBlock, Message, ModelRequest, ToolSpec } from "./model.js";
import { perSealedEntry } from "./sealed.js";

/** Rough tokens of a text: one per four characters, at least one per block. */
export function estimateTextTokens(text: string): number {
  return Math.max(1, Math.ceil(text.length / 4));
}

/** The text a block contributes to a request, for estimates. */
export function blockText(block: ContentBlock): string {
  switch (block.type) {
    case "text":
      return block.text;
    case "thinking":
      return block.thinking + block.signature;
    case "redacted_thinking":
      return block.data;
    case "tool_use":
      return block.name + JSON.stringify(block.input ?? {});
    case "tool_result":
      return typeof block.content === "string" ? block.content : block.content.map((part) => part.text).join("\n");
  }
}

/**
 * Estimated tokens of one message (the same rule for every provider; calibrated against real
 * usage). Worked out once for a recorded message of a run (see `sealed.ts`), so estimating a
 * long conversation before each request costs per message, not per character.
 */
export const estimateMessageTokens: (message: Message) => number = perSealedEntry((message: Message) => {
  if (typeof message.content === "string") return estimateTextTokens(message.content);
  return message.content.reduce((sum, block) => sum + estimateTextTokens(blockText(block)), 0);
});

/** Estimated tokens of a tool's definition; worked out once for a sealed one (a run seals the specs it offers). */
const estimateToolTokens: (tool: ToolSpec) => number = perSealedEntry((tool: ToolSpec) =>
  estimateTextTokens(tool.name + tool.description + JSON.stringify(tool.inputSchema)),
);

/**
 * Estimated input tokens of a request before it is sent: tools, system prompt and messages, one
 * token per four characters. Use it to check a budget before sending; a `ContextTracker`'s
 * `expectedTokens` is closer once a response has calibrated it.
 *
 * @example
 * if (spent + estimateRequestTokens(request) + request.maxTokens > budget) stop();
 */
export function estimateRequestTokens(request: Pick<ModelRequest, "system" | "messages"> & { tools: readonly ToolSpec[] }): number {
  let sum = estimateTextTokens(request.system);
  for (const tool of request.tools) sum += estimateToolTokens(tool);
  for (const message of request.messages) sum += estimateMessageTokens(message);
  return sum;
}
