import { afterEach, describe, expect, it } from "vitest";
import { anthropic } from "../model/anthropic.js";
import { estimateRequestTokens } from "../model/estimate.js";
import type { Model, ModelRequest, ToolSpec } from "../model/model.js";
import { reply, startMessagesServer, type MessagesServer } from "../testing/index.js";
import { builtinTools } from "../tools/index.js";
import { LocalWorkspace } from "../workspace/local-workspace.js";
import { createTestRepo } from "../workspace/test-repo.js";
import { startRun } from "./start-run.js";

let server: MessagesServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

function deepFrozen(value: unknown): boolean {
  if (value === null || typeof value !== "object") return true;
  return Object.isFrozen(value) && Object.values(value).every(deepFrozen);
}

describe("the tool specs a run offers", () => {
  it("are the same frozen objects in every request of a conversation, so an adapter cannot change the next request's tools", async () => {
    server = await startMessagesServer({
      script: [reply.toolUse("list_files", {}), reply.toolUse("write_file", { path: "a.md", content: "a\n" }), reply.text("Done.")],
    });
    const workspace = await LocalWorkspace.open(await createTestRepo({ "README.md": "# app\n" }), { sandbox: false });
    const inner = anthropic({ model: "claude-sonnet-5-5", apiKey: "test", baseURL: server.url });
    const seen: ModelRequest["tools"][] = [];
    const refused: unknown[] = [];
    // A host's adapter in front of the real one, trying to change what it was handed.
    const model: Model = {
      id: inner.id,
      contextWindow: inner.contextWindow,
      stream(request, options) {
        seen.push([...request.tools]);
        try {
          (request.tools[0] as ToolSpec).description += " (changed)";
        } catch (error) {
          refused.push(error);
        }
        return inner.stream(request, options);
      },
    };
    const result = await startRun({ vision: "Write a.md", workspace, model, tools: builtinTools() }).result;
    expect(result.status).toBe("success");
    expect(seen).toHaveLength(3);
    for (const tools of seen.slice(1)) expect(tools.every((tool, i) => tool === seen[0]![i])).toBe(true);
    expect(seen[0]!.every(deepFrozen)).toBe(true);
    expect(refused).toHaveLength(3);
    for (const error of refused) expect(error).toBeInstanceOf(TypeError);
    // What went to the server is what the run offered, not the change it refused.
    const sent = server.requests.filter((r) => r.path === "/v1/messages").map((r) => (r.body.tools as Array<{ description: string }>)[0]!.description);
    expect(sent.every((description) => !description.includes("(changed)"))).toBe(true);
  });

  it("are estimated afresh each time when not sealed, so a host's own request that changes its tools is estimated as it is", () => {
    const tool: ToolSpec = { name: "look", description: "Looks.", inputSchema: { type: "object", properties: {} } };
    const request = { system: "", messages: [], tools: [tool] };
    const before = estimateRequestTokens(request);
    tool.description = "Looks at everything there is to look at, in great detail.".repeat(10);
    expect(estimateRequestTokens(request)).toBeGreaterThan(before + 100);
  });
});
