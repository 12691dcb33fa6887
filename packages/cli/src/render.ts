import type { KeenEvent, Usage } from "@keen/agent-core";

/** One human-readable line per interesting event, or null to stay quiet. */
export function describeEvent(event: KeenEvent): string | null {
  const who = event.agentId === "root" ? "" : `[${event.agentId}] `;
  switch (event.type) {
    case "run.started":
      return `keen ▸ ${event.vision.split("\n")[0]}\n  repo ${event.repo} · branch ${event.branch} · model ${event.model}`;
    case "agent.spawned":
      return event.parentId === null ? null : `[${event.agentId}] spawned by ${event.parentId} on ${event.branch} (depth ${event.depth}): ${event.title}`;
    case "agent.phase":
      return event.phase === "RUN" ? null : `${who}phase ${event.phase}`;
    case "agent.completed":
      return `${who}agent ${event.status}: ${firstLine(event.summary)}`;
    case "model.text":
      return `${who}${indent(event.text)}`;
    case "model.retry":
      return `${who}retry ${event.attempt} in ${event.delayMs} ms: ${event.reason}`;
    case "tool.started":
      return `${who}→ ${event.name} ${brief(event.input)}`;
    case "tool.completed":
      return event.isError ? `${who}✗ ${event.name}: ${event.output.split("\n")[0]}` : null;
    case "git.commit":
      return `${who}commit ${event.sha.slice(0, 10)} on ${event.branch}`;
    case "git.branch":
      return `${who}branch ${event.branch} from ${event.from}`;
    case "git.merge": {
      const files = event.conflictedFiles.length ? ` (conflict in ${event.conflictedFiles.join(", ")})` : "";
      const result = { merged: "merged", resolved: "merged, conflict resolved", rolled_back: "rolled back" }[event.result];
      return `${who}merge ${event.branch} into ${event.into}: ${result}${files}`;
    }
    case "validation.result":
      return `${who}validation ${event.passed ? "passed" : `failed (exit ${event.exitCode ?? "none"})`}: ${event.command}`;
    case "limit.reached":
      return `${who}limit ${event.limit} reached: ${event.detail}`;
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
  return text.length > 100 ? `${text.slice(0, 99)}…` : text;
}

function firstLine(text: string): string {
  const line = text.trim().split("\n")[0] ?? "";
  return line.length > 160 ? `${line.slice(0, 159)}…` : line;
}

function indent(text: string): string {
  return text.trim().split("\n").join("\n  ");
}
