import * as z from "zod";
import type { ToolSpec } from "../model/model.js";
import { seal } from "../model/sealed.js";
import type { Workspace } from "../workspace/workspace.js";

/** What a tool's `execute` receives besides its input. */
export interface ToolContext {
  workspace: Workspace;
  /** Fires when the run is aborted; long-running tools must stop promptly. */
  signal: AbortSignal;
  /** The agent calling the tool. */
  agentId: string;
  /** The `tool_use` id of this call. */
  toolUseId: string;
}

/** A tool may return plain text, or text flagged as an error the model should see. */
export type ToolOutput = string | { content: string; isError?: boolean };

export interface Tool<Input = unknown> {
  readonly name: string;
  readonly description: string;
  readonly input: z.ZodType<Input>;
  /** True when the tool never changes the workspace; read-only phases offer only these. */
  readonly readOnly: boolean;
  /**
   * True when the tool changes the workspace only through `workspace.writeFile` (keen's
   * `write_file` and `edit_file`): after a turn whose tools are all such or read-only, keen
   * records the files written in the run's snapshot instead of saving a git checkpoint of them.
   */
  readonly journaled?: boolean;
  execute(input: Input, context: ToolContext): Promise<ToolOutput> | ToolOutput;
}

export interface ToolDefinition<Schema extends z.ZodType> {
  name: string;
  description: string;
  input: Schema;
  readOnly?: boolean;
  journaled?: boolean;
  execute(input: z.infer<Schema>, context: ToolContext): Promise<ToolOutput> | ToolOutput;
}

const TOOL_NAME = /^[a-zA-Z0-9_-]{1,64}$/;

/**
 * Defines a tool the model can call. The input is validated against the zod schema before
 * `execute` runs; invalid input or a thrown error reaches the model as an `is_error` result.
 *
 * @example
 * const shout = defineTool({
 *   name: "shout",
 *   description: "Upper-cases a text",
 *   input: z.object({ text: z.string() }),
 *   execute: ({ text }) => text.toUpperCase(),
 * });
 */
export function defineTool<Schema extends z.ZodType>(definition: ToolDefinition<Schema>): Tool<z.infer<Schema>> {
  if (!TOOL_NAME.test(definition.name)) {
    throw new TypeError(`Tool name "${definition.name}" must match ${TOOL_NAME}`);
  }
  if (!definition.description.trim()) throw new TypeError(`Tool "${definition.name}" needs a description`);
  return {
    name: definition.name,
    description: definition.description,
    input: definition.input as z.ZodType<z.infer<Schema>>,
    readOnly: definition.readOnly ?? false,
    ...(definition.journaled && !definition.readOnly ? { journaled: true } : {}),
    execute: definition.execute,
  };
}

/** Specs already made, by tool and input schema: every phase and agent of a run offers the same tools. */
const specs = new WeakMap<Tool<any>, { input: unknown; spec: ToolSpec }>();

/**
 * The JSON-schema form of a tool that is sent to the model: JSON data only, sealed (frozen, see
 * `model/sealed.ts`), and the same object for as long as the tool's name, words and input schema
 * stay the same, so what is worked out from it (its estimated tokens) is kept.
 */
export function toolSpec(tool: Tool<any>): ToolSpec {
  const known = specs.get(tool);
  if (known && known.input === tool.input && known.spec.name === tool.name && known.spec.description === tool.description) return known.spec;
  // Through JSON: zod adds properties no JSON form has (`~standard`, with functions), which would keep the spec from being sealed.
  const { $schema: _, ...schema } = JSON.parse(JSON.stringify(z.toJSONSchema(tool.input, { target: "draft-7", io: "input" }))) as Record<string, unknown>;
  const spec = seal({ name: tool.name, description: tool.description, inputSchema: schema });
  specs.set(tool, { input: tool.input, spec });
  return spec;
}

export interface ToolResult {
  content: string;
  isError: boolean;
}

/**
 * Validates `rawInput` and runs the tool. Never throws: every failure becomes an error result
 * with a message the model can act on.
 */
export async function executeTool(tool: Tool<any>, rawInput: unknown, context: ToolContext): Promise<ToolResult> {
  const parsed = tool.input.safeParse(rawInput ?? {});
  if (!parsed.success) {
    return { content: `Invalid input for ${tool.name}: ${formatIssues(parsed.error)}`, isError: true };
  }
  try {
    const output = await tool.execute(parsed.data, context);
    if (typeof output === "string") return { content: output, isError: false };
    return { content: output.content, isError: output.isError ?? false };
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    return { content: `${tool.name} failed: ${message}`, isError: true };
  }
}

function formatIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => `${issue.path.length ? issue.path.join(".") : "(input)"}: ${issue.message}`)
    .join("; ");
}
