/**
 * The lifecycle as a state machine. An agent is always in one phase; the phase's function runs
 * and returns a `Step` (the next phase, or DONE); `enter` checks the step against TRANSITIONS,
 * tells the agent (a tag line and the phase's instruction) and emits `agent.phase`. Nothing else
 * changes an agent's phase.
 *
 *   EXPLORE ──▶ PLAN ──▶ SUMMON ──▶ COMPLETE ──▶ DONE
 *      └──────────┴───────────────────▲
 *   RUN ──▶ DONE                      (the single-agent loop of `startRun`)
 *
 * Adding a phase: its name in `Phase` (events.ts), its module under phases/, and its row here.
 */
import { AbortedError, isKeenError, KeenError } from "../errors.js";
import type { Phase } from "../events.js";
import type { Workspace } from "../workspace/workspace.js";
import { agentTag } from "./agent-tag.js";
import { BudgetSpent } from "./budget.js";
import { commitWork } from "./commits.js";
import { appendUserText } from "./converse.js";
import type { PhaseDefinition } from "./phase.js";
import { completePhase } from "./phases/complete.js";
import { explorePhase } from "./phases/explore.js";
import { planPhase } from "./phases/plan.js";
import { runPhase } from "./phases/run.js";
import { summonPhase } from "./phases/summon.js";
import { Step, type NextPhase } from "./step.js";
import type { AgentState } from "./task-state.js";
import type { AgentTree } from "./tree.js";
import { isInterruption } from "./interruption.js";
import { dropTurnCheckpoint, restoreInterruptedTurn } from "./turn-checkpoints.js";

/** Where each phase may go next. */
export const TRANSITIONS: Record<Phase, readonly NextPhase[]> = {
  EXPLORE: ["PLAN", "COMPLETE"],
  PLAN: ["SUMMON", "COMPLETE"],
  SUMMON: ["COMPLETE"],
  COMPLETE: ["DONE"],
  RUN: ["DONE"],
};

/** The function of each phase. */
export const PHASES: Record<Phase, PhaseDefinition> = {
  EXPLORE: explorePhase,
  PLAN: planPhase,
  SUMMON: summonPhase,
  COMPLETE: completePhase,
  RUN: runPhase,
};

/**
 * Drives one agent from its current phase to DONE, whatever happens to it, then keeps its work
 * in a commit and emits `agent.completed`. Safe to call again for an agent resumed mid-phase.
 */
export async function driveAgent(
  tree: AgentTree,
  agent: AgentState,
  workspace: Workspace,
  firstMessage: (agent: AgentState, workspace: Workspace, instruction: string) => Promise<string>,
): Promise<void> {
  let end: Extract<Step, { next: "DONE" }> | undefined;
  try {
    // A resumed agent whose last turn was cut short repeats it from the files it started with.
    await restoreInterruptedTurn(tree, agent, workspace);
    if (agent.messages.length === 0 && agent.phase !== "DONE") {
      agent.messages.push({ role: "user", content: await firstMessage(agent, workspace, PHASES[agent.phase].instruction()) });
      await tree.snapshot();
    }
    while (agent.phase !== "DONE") {
      if (tree.signal.aborted) throw tree.signal.reason ?? new AbortedError();
      const step = Step.parse(await PHASES[agent.phase].run(tree, agent, workspace));
      checkTransition(agent, step);
      if (step.next === "DONE") {
        end = step;
        break;
      }
      enter(tree, agent, step);
      await tree.snapshot();
    }
  } catch (caught) {
    if (isInterruption(tree, caught)) {
      // The model is unreachable: stop here, keep the phase, keep the work; a resume goes on from it.
      tree.interrupt(caught);
      await commitWork(tree, agent, workspace, "interrupted");
      await tree.snapshot();
      return;
    }
    end = failureStep(tree, caught);
  }
  if (end) {
    // The work is committed before the agent is DONE: any snapshot (other agents take them
    // meanwhile) that shows it DONE finds its work on its branch, and a resume never drives a
    // DONE agent again. The commit may still turn the outcome into an error.
    agent.status = end.status;
    agent.summary = end.summary;
    if (end.error) agent.error = end.error;
    await commitWork(tree, agent, workspace);
    enter(tree, agent, { next: "DONE", status: agent.status, summary: agent.summary, ...(agent.error ? { error: agent.error } : {}) }, { force: true });
  } else {
    await commitWork(tree, agent, workspace);
  }
  tree.emit({ type: "agent.completed", agentId: agent.id, status: agent.status ?? "error", summary: agent.summary ?? "", usage: tree.treeUsage(agent) });
  await tree.snapshot();
  // The root's goes at the run's end with any left over, while the run's worktree is removed.
  if (agent.parentId !== null) await dropTurnCheckpoint(tree, agent, workspace);
}

function checkTransition(agent: AgentState, step: Step): void {
  if (agent.phase !== "DONE" && !TRANSITIONS[agent.phase].includes(step.next)) {
    throw new KeenError("invalid_transition", `Agent ${agent.id} cannot go from ${agent.phase} to ${step.next}`);
  }
}

/** Moves `agent` to the step's phase: the only place an agent's phase changes. */
function enter(tree: AgentTree, agent: AgentState, step: Step, { force = false } = {}): void {
  const from = agent.phase;
  if (from === "DONE") return;
  if (!force) checkTransition(agent, step);
  if (step.next === "DONE") {
    agent.status = step.status;
    agent.summary = step.summary;
    if (step.error) agent.error = step.error;
    agent.phase = "DONE";
    return;
  }
  const text = [step.report, agentTag(agent.id, step.next), PHASES[step.next].instruction(step.note)].filter(Boolean).join("\n");
  appendUserText(agent.messages, text);
  // SUMMON merges children into the worktree: its files are no longer the fork's.
  if (step.next === "SUMMON") tree.pristine.delete(agent.id);
  agent.phase = step.next;
  tree.emit({ type: "agent.phase", agentId: agent.id, phase: step.next, previous: from });
}

/** How an agent ends when its phase throws: stopped (abort, budget), failed, or an error. */
function failureStep(tree: AgentTree, caught: unknown): Extract<Step, { next: "DONE" }> {
  if (tree.signal.aborted || isKeenError(caught, "aborted") || caught instanceof BudgetSpent) {
    const reason = tree.signal.reason ?? caught;
    const message = reason instanceof Error ? reason.message : typeof reason === "string" ? reason : "aborted";
    return { next: "DONE", status: "aborted", summary: `Stopped: ${message}`, error: { code: "aborted", message } };
  }
  const message = caught instanceof Error ? caught.message : String(caught);
  const code = isKeenError(caught) ? caught.code : "internal_error";
  const failed = code === "phase_failed" || code === "max_turns";
  return { next: "DONE", status: failed ? "failed" : "error", summary: message, error: { code, message } };
}
