import FullSdk from "@anthropic-ai/sdk";
import { describe, expect, it } from "vitest";
import { reply, startMessagesServer } from "@keen/agent-core/testing";
import Anthropic, { APIError, APIUserAbortError } from "./anthropic-sdk.js";

describe("the SDK inside the keen bundle", () => {
  it("streams messages and counts tokens as the full client does, with the SDK's own error classes", async () => {
    const server = await startMessagesServer({ apiKey: "right", script: [reply.text("hello")] });
    try {
      const client = new Anthropic({ apiKey: "right", baseURL: server.url, maxRetries: 0 });
      const message = await client.messages.stream({ model: "claude-sonnet-5-5", max_tokens: 64, messages: [{ role: "user", content: "hi" }] }).finalMessage();
      expect(message.content).toEqual([expect.objectContaining({ type: "text", text: "hello" })]);
      const counted = await client.messages.countTokens({ model: "claude-sonnet-5-5", messages: [{ role: "user", content: "ping" }] });
      expect(counted.input_tokens).toBeGreaterThan(0);

      const refused = await new Anthropic({ apiKey: "wrong", baseURL: server.url, maxRetries: 0 }).messages.countTokens({ model: "m", messages: [{ role: "user", content: "x" }] }).catch((error: unknown) => error);
      expect(refused).toBeInstanceOf(Anthropic.AuthenticationError);
      expect(refused).toBeInstanceOf(FullSdk.AuthenticationError);
    } finally {
      await server.close();
    }
    expect(APIError).toBe(FullSdk.APIError);
    expect(APIUserAbortError).toBe(FullSdk.APIUserAbortError);
    for (const name of ["AuthenticationError", "PermissionDeniedError", "APIConnectionError", "APIConnectionTimeoutError"] as const) expect(Anthropic[name]).toBe(FullSdk[name]);
  });
});
