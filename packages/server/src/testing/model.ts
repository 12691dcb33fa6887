import { reply, requestPosition, startMessagesServer, type MessagesServer, type ScriptedReply } from "@keen/agent-core/testing";

/**
 * An offline model that explores, writes `path` with `content` (after `writeDelayMs`), and
 * completes. Stateless: the reply depends only on the request, so concurrent runs and a
 * resumed run get the same answers.
 */
export async function scriptedModel(options: { path?: string; content?: string; writeDelayMs?: number } = {}): Promise<MessagesServer> {
  const path = options.path ?? "NOTES.md";
  const content = options.content ?? "# Notes\nwritten by the agent\n";
  return startMessagesServer({
    policy: (request) => {
      // Every phase is offered the same tools; the agent's tag line says which phase asks.
      if (requestPosition(request).phase === "EXPLORE") return reply.toolUse("finish_explore", { summary: "Looked around.", confidence: 0.9, next_phase: "COMPLETE" });
      const wrote = (request.messages as Array<{ role: string; content: unknown }>).some(
        (m) => m.role === "assistant" && Array.isArray(m.content) && m.content.some((b: { type: string; name?: string }) => b.type === "tool_use" && b.name === "write_file"),
      );
      if (!wrote) {
        const write: ScriptedReply = reply.toolUse("write_file", { path, content });
        return options.writeDelayMs ? reply.slow(options.writeDelayMs, write) : write;
      }
      return reply.toolUse("complete_task", { summary: `Wrote ${path}.`, status: "success" });
    },
  });
}
