import type { KeenEvent, Usage } from "@keen/agent-core";
import { terminalLine, terminalText } from "./terminal-text.js";
import { fitWidth } from "./terminal-width.js";

/**
 * One human-readable line per interesting event, or null to stay quiet. Text from the event
 * (titles, model text, file names, commands, errors) is escaped for the terminal: a control
 * character never acts on it, and one-line fields stay on one line.
 */
export function describeEvent(event: KeenEvent): string | null {
  const line = describeRaw(event);
  return line === null ? null : terminalText(line);
}

function describeRaw(event: KeenEvent): string | null {
  const l = terminalLine;
  const who = event.agentId === "root" ? "" : `[${l(event.agentId)}] `;
  switch (event.type) {
    case "run.started":
      return `keen ▸ ${l(event.vision.split("\n")[0] ?? "")}\n  repo ${l(event.repo)} · branch ${l(event.branch)} · model ${l(event.model)}`;
    case "agent.spawned":
      return event.parentId === null ? null : `[${l(event.agentId)}] spawned by ${l(event.parentId)} on ${l(event.branch)} (depth ${event.depth}): ${l(event.title)}`;
    case "agent.phase":
      return event.phase === "RUN" ? null : `${who}phase ${event.phase}`;
    case "agent.completed":
      return `${who}agent ${event.status}: ${firstLine(event.summary)}`;
    case "model.text":
      return `${who}${indent(event.text)}`;
    case "model.retry":
      return `${who}retry ${event.attempt} in ${event.delayMs} ms: ${l(event.reason)}`;
    case "tool.started":
      return `${who}→ ${l(event.name)} ${l(brief(event.input))}`;
    case "tool.completed":
      return event.isError ? `${who}✗ ${l(event.name)}: ${l(event.output.split("\n")[0] ?? "")}` : null;
    case "git.commit":
      return `${who}commit ${l(event.sha.slice(0, 10))} on ${l(event.branch)}`;
    case "git.branch":
      return `${who}branch ${l(event.branch)} from ${l(event.from)}`;
    case "git.merge": {
      const files = event.conflictedFiles.length ? ` (conflict in ${l(event.conflictedFiles.join(", "))})` : "";
      const result = { merged: "merged", resolved: "merged, conflict resolved", rolled_back: "rolled back" }[event.result];
      return `${who}merge ${l(event.branch)} into ${l(event.into)}: ${result}${files}`;
    }
    case "validation.result":
      return `${who}validation ${event.passed ? "passed" : `failed (exit ${event.exitCode ?? "none"})`}: ${l(event.command)}`;
    case "limit.reached":
      return `${who}limit ${event.limit} reached: ${l(event.detail)}`;
    case "run.completed":
      return `${event.status === "success" ? "done" : event.status} in ${(event.durationMs / 1000).toFixed(1)} s · ${formatUsage(event.usage)}`;
    default:
      return null;
  }
}

export function formatUsage(usage: Usage): string {
  return `tokens in ${usage.inputTokens} · out ${usage.outputTokens} · cache write ${usage.cacheCreationInputTokens} · cache read ${usage.cacheReadInputTokens}`;
}

function brief(input: unknown): string {
  const text = JSON.stringify(input) ?? "";
  return fitWidth(text, 100);
}

function firstLine(text: string): string {
  const line = terminalLine(text.trim().split("\n")[0] ?? "");
  return fitWidth(line, 160);
}

function indent(text: string): string {
  return text.trim().split("\n").join("\n  ");
}
