import { KeenError } from "../errors.js";
import { addUsage, type Message } from "../model/model.js";
import { runConversation, type ConversationResult } from "../run/conversation.js";
import type { Tool } from "../tools/define-tool.js";
import type { Workspace } from "../workspace/workspace.js";
import { reminderMessage } from "./prompts.js";
import type { AgentState } from "./task-state.js";
import type { AgentTree } from "./tree.js";
import { countTurn, forgetUnchangedFiles, turnCheckpoints } from "./turn-checkpoints.js";

export interface ConverseOptions {
  /** Tools the agent may call now; with a closing tool, every lifecycle tool is shown and the others are refused. */
  tools: Tool<any>[];
  /** The tool that ends this step. Without one, the conversation ends when the model stops calling tools. */
  closingTool?: string;
  /**
   * Save the agent's files before each turn whose tools may write, so a resume can put them back
   * before repeating a turn a crash cut short (saved while the turn's model request is in
   * flight; not again after a turn that only read or wrote only through keen's file tools, whose
   * writes the snapshot records instead). Default true; off while resolving a merge (a
   * resume restarts an interrupted merge from its pre-merge commit instead).
   */
  checkpoint?: boolean;
}

export type ConverseResult = ConversationResult & { closingCall?: { name: string; input: unknown } };

/**
 * Runs the agent's conversation for one step of a phase: until its closing tool is called (one
 * reminder when the model answers without it, then `phase_failed`), or, with no closing tool,
 * until the model stops calling tools. Running out of turns raises `max_turns` after a
 * `limit.reached` event. Snapshots after every turn (a turn counts as done once its snapshot is
 * handed over); before each turn whose tools may write, saves the agent's files
 * (`turn-checkpoints.ts`).
 */
export async function converse(tree: AgentTree, agent: AgentState, workspace: Workspace, options: ConverseOptions): Promise<ConverseResult> {
  const writes = options.checkpoint !== false && options.tools.some((tool) => !tool.readOnly);
  forgetUnchangedFiles(agent);
  try {
    return await conversePhase(tree, agent, workspace, options, writes);
  } finally {
    forgetUnchangedFiles(agent);
  }
}

async function conversePhase(tree: AgentTree, agent: AgentState, workspace: Workspace, options: ConverseOptions, writes: boolean): Promise<ConverseResult> {
  const { limits } = tree.state;
  const { settings } = tree;
  let reminded = false;
  let turnsLeft = limits.maxTurnsPerPhase;
  const context = tree.contextFor(agent);
  const checkpoints = writes ? turnCheckpoints(tree, agent, workspace) : undefined;
  while (true) {
    const result = await runConversation({
      agentId: agent.id,
      model: tree.model,
      system: tree.system,
      messages: agent.messages,
      tools: options.tools,
      // A lifecycle step shows every lifecycle tool, always in one order, so the cached prefix
      // survives phase changes; the tools of this step are the ones that run.
      ...(options.closingTool ? { offeredTools: tree.allLifecycleTools() } : {}),
      // Notes the paths keen's file tools write, for the journal.
      workspace: checkpoints?.workspace ?? workspace,
      emit: (event) => tree.emit(event),
      signal: tree.signal,
      maxTurns: turnsLeft,
      maxTokens: settings.maxTokens ?? 8192,
      ...(settings.thinking ? { thinking: settings.thinking } : {}),
      ...(options.closingTool ? { closingTools: new Set([options.closingTool]) } : {}),
      ...(context ? { context } : {}),
      usageBefore: agent.usage,
      // Saved while the request is in flight: nothing writes this agent's files until its tools run.
      ...(checkpoints ? { checkpoint: (signal: AbortSignal) => checkpoints.save(signal) } : {}),
      onTurn: async (_turn, info) => {
        if (!info.readOnly) tree.pristine.delete(agent.id);
        if (checkpoints) await checkpoints.count(info);
        else countTurn(agent);
        return tree.snapshot();
      },
      onUsage: (usage) => {
        agent.usage = addUsage(agent.usage, usage);
      },
    });
    turnsLeft -= result.turns;
    if (result.outcome === "closed" && result.closingCall) return result;
    if (result.outcome === "done" && !options.closingTool) return result;
    if (result.outcome === "max_turns" || turnsLeft <= 0) {
      tree.emit({ type: "limit.reached", agentId: agent.id, limit: "maxTurns", value: limits.maxTurnsPerPhase, detail: `Agent ${agent.id} used all its turns in ${agent.phase}` });
      throw new KeenError("max_turns", `Agent ${agent.id} did not finish ${agent.phase} within ${limits.maxTurnsPerPhase} turns`);
    }
    if (reminded) throw new KeenError("phase_failed", `Agent ${agent.id} ended ${agent.phase} without calling ${options.closingTool}`);
    reminded = true;
    appendUserText(agent.messages, reminderMessage(options.closingTool!));
  }
}

/**
 * Adds text to the conversation as (or appended to) the last user message. A recorded message
 * is never changed (snapshots share it): the last one is replaced by a longer copy.
 */
export function appendUserText(messages: Message[], text: string): void {
  const last = messages.at(-1);
  if (last?.role === "user") {
    messages[messages.length - 1] = { ...last, content: typeof last.content === "string" ? `${last.content}\n\n${text}` : [...last.content, { type: "text", text }] };
  } else {
    messages.push({ role: "user", content: text });
  }
}
