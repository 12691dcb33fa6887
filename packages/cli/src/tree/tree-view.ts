import { addUsage, emptyUsage, type Usage } from "@keen/agent-core";
import { terminalLine } from "../terminal-text.js";
import { displayWidth, fitWidth, padWidth, takeWidth } from "../terminal-width.js";
import { agentsInOrder, displayStatus, type AgentDisplayStatus, type AgentNode, type TreeState } from "./tree-state.js";

export interface RenderTreeOptions {
  /** Terminal columns; no line of the result is wider. Default 80. */
  width?: number;
  /** Wrap statuses in ANSI colours. Default false. */
  color?: boolean;
  /** Milliseconds since the run started, shown in the header while it runs. */
  elapsedMs?: number;
}

type Style = "bold" | "dim" | "green" | "red" | "yellow" | "magenta" | "cyan";
type Segment = { text: string; style?: Style };

const ANSI: Record<Style, [string, string]> = {
  bold: ["\x1b[1m", "\x1b[22m"],
  dim: ["\x1b[2m", "\x1b[22m"],
  green: ["\x1b[32m", "\x1b[39m"],
  red: ["\x1b[31m", "\x1b[39m"],
  yellow: ["\x1b[33m", "\x1b[39m"],
  magenta: ["\x1b[35m", "\x1b[39m"],
  cyan: ["\x1b[36m", "\x1b[39m"],
};

const STATUS_STYLE: Record<AgentDisplayStatus, Style> = {
  running: "yellow",
  completed: "green",
  failed: "red",
  error: "red",
  aborted: "dim",
  interrupted: "yellow",
  "rolled back": "magenta",
};

const MIN_TITLE = 8;
/** Titles keep this many columns before the token counts at the right edge give way. */
const KEPT_TITLE = 20;
const MAX_TITLE = 36;

/**
 * Renders the agent tree as lines of text (no trailing newline): a header with the vision
 * and run status, one line per agent (indented by depth: id, title, branch, phase, status,
 * tokens), and a footer with totals. Pure: the same state and options give the same string.
 *
 * @example
 * process.stdout.write(renderTree(tree, { width: process.stdout.columns, color: true }) + "\n");
 * // keen ▸ Add a farewell function · running · 2.1 s
 * // root      Add a farewell function  main      SUMMON    running          in 1.2k out 310
 * // ├─ A      Greeting docs            summon-A  DONE      completed·merged in 800 out 95
 * // └─ B      Farewell function        summon-B  COMPLETE  running          in 420 out 60
 */
export function renderTree(state: TreeState, options: RenderTreeOptions = {}): string {
  const width = Math.max(20, Math.floor(options.width ?? 80));
  const agents = agentsInOrder(state);
  const rows = agents.map((agent) => agentColumns(state, agent));

  const nameWidth = Math.max(0, ...rows.map((r) => displayWidth(r.name)));
  const branchWidth = Math.max(0, ...rows.map((r) => displayWidth(r.branch)));
  const phaseWidth = Math.max(0, ...rows.map((r) => displayWidth(r.phase)));
  const statusWidth = Math.max(0, ...rows.map((r) => displayWidth(r.status)));
  const tokensWidth = Math.max(0, ...rows.map((r) => displayWidth(r.tokens)));
  const fixed = nameWidth + branchWidth + phaseWidth + statusWidth + tokensWidth + 2 * 5;
  let titleWidth = Math.min(MAX_TITLE, Math.max(0, ...rows.map((r) => displayWidth(r.title))));
  // Narrow terminals shrink titles down to KEPT_TITLE, then cut token counts at the edge, and
  // only on very narrow ones shrink titles further.
  if (fixed + titleWidth > width) {
    const withoutTokens = width - (fixed - tokensWidth);
    titleWidth = Math.max(MIN_TITLE, Math.min(titleWidth, Math.max(width - fixed, Math.min(KEPT_TITLE, withoutTokens))));
  }

  const lines: Segment[][] = [header(state, options.elapsedMs, width)];
  for (const row of rows) {
    lines.push([
      { text: padWidth(row.name, nameWidth + 2) },
      { text: padWidth(fitWidth(row.title, titleWidth), titleWidth + 2) },
      { text: padWidth(row.branch, branchWidth + 2), style: "cyan" },
      { text: padWidth(row.phase, phaseWidth + 2) },
      { text: padWidth(row.status, statusWidth + 2), style: STATUS_STYLE[row.display] },
      { text: row.tokens, style: "dim" },
    ]);
  }
  lines.push(...footer(state, agents));
  return lines.map((segments) => paint(cut(segments, width), options.color ?? false).trimEnd()).join("\n");
}

interface Columns {
  name: string;
  title: string;
  branch: string;
  phase: string;
  status: string;
  display: AgentDisplayStatus;
  tokens: string;
}

function agentColumns(state: TreeState, agent: AgentNode): Columns {
  const display = displayStatus(agent);
  let status: string = display;
  if (display === "running" && agent.activeTool) status = `running ${terminalLine(agent.activeTool)}`;
  if (agent.merge === "merged") status += " · merged";
  if (agent.merge === "resolved") status += " · resolved";
  return {
    // Everything here came from the event stream: shown escaped, on one line.
    name: treePrefix(state, agent) + terminalLine(agent.id),
    title: terminalLine(agent.title),
    branch: terminalLine(agent.branch),
    phase: agent.phase ?? "",
    status,
    display,
    tokens: formatTokens(agent.usage),
  };
}

/** `├─ `/`└─ ` before an agent, with `│  ` for every ancestor that has siblings below it. */
function treePrefix(state: TreeState, agent: AgentNode): string {
  if (agent.parentId === null) return "";
  const parts: string[] = [];
  let node: AgentNode | undefined = agent;
  let first = true;
  while (node && node.parentId !== null) {
    const parent: AgentNode | undefined = state.agents[node.parentId];
    if (!parent) break;
    const last = parent.children.at(-1) === node.id;
    parts.unshift(first ? (last ? "└─ " : "├─ ") : last ? "   " : "│  ");
    first = false;
    node = parent;
  }
  return parts.join("");
}

/** `keen ▸ <vision> · <status> · <time>`: the vision gives way so the status stays visible. */
function header(state: TreeState, elapsedMs: number | undefined, width: number): Segment[] {
  const seconds = state.durationMs ?? elapsedMs;
  const status: Segment = { text: ` · ${state.status}`, style: state.status === "success" ? "green" : state.status === "running" ? "yellow" : "red" };
  const time: Segment[] = seconds !== undefined ? [{ text: ` · ${(seconds / 1000).toFixed(1)} s`, style: "dim" }] : [];
  const prefix = "keen ▸ ";
  const room = width - displayWidth(prefix) - displayWidth(status.text) - time.reduce((n, s) => n + displayWidth(s.text), 0);
  const vision = fitWidth(terminalLine(state.vision.trim().split("\n")[0] ?? ""), Math.max(MIN_TITLE, room));
  return [{ text: prefix, style: "bold" }, { text: vision }, status, ...time];
}

function footer(state: TreeState, agents: AgentNode[]): Segment[][] {
  const running = agents.filter((a) => a.status === undefined).length;
  const merges = agents.filter((a) => a.merge);
  const count = (result: AgentNode["merge"]) => merges.filter((a) => a.merge === result).length;
  const total = state.usage ?? agents.reduce((sum, a) => addUsage(sum, a.usage), emptyUsage());
  const parts = [
    `${agents.length} agent${agents.length === 1 ? "" : "s"}${running ? `, ${running} running` : ""}`,
    `merges ${merges.length}${count("resolved") ? `, ${count("resolved")} resolved` : ""}${count("rolled_back") ? `, ${count("rolled_back")} rolled back` : ""}`,
    `tokens ${formatTokens(total)}`,
  ];
  const lines: Segment[][] = [[{ text: parts.join(" · "), style: "dim" }]];
  if (state.lastValidation) {
    const v = state.lastValidation;
    lines.push([
      { text: "validation ", style: "dim" },
      { text: v.passed ? "passed" : "failed", style: v.passed ? "green" : "red" },
      { text: terminalLine(` (${v.agentId}): ${v.command}`), style: "dim" },
    ]);
  }
  for (const limit of state.limits.slice(-2)) lines.push([{ text: terminalLine(`limit ${limit}`), style: "yellow" }]);
  if (state.error && state.status !== "success") lines.push([{ text: terminalLine(`${state.error.code}: ${state.error.message}`), style: "red" }]);
  return lines;
}

/** `in 12.3k out 940 cache w 2.1k r 48k`: compact enough for one column. */
export function formatTokens(usage: Usage): string {
  const cache = usage.cacheCreationInputTokens || usage.cacheReadInputTokens ? ` cache w ${compact(usage.cacheCreationInputTokens)} r ${compact(usage.cacheReadInputTokens)}` : "";
  return `in ${compact(usage.inputTokens)} out ${compact(usage.outputTokens)}${cache}`;
}

function compact(n: number): string {
  if (n < 1000) return String(n);
  if (n < 1_000_000) return `${(n / 1000).toFixed(n < 10_000 ? 1 : 0)}k`;
  return `${(n / 1_000_000).toFixed(1)}M`;
}

/** Cuts a line of segments to `width` terminal columns, marking the cut with an ellipsis. */
function cut(segments: Segment[], width: number): Segment[] {
  const total = segments.reduce((n, s) => n + displayWidth(s.text), 0);
  if (total <= width) return segments;
  const out: Segment[] = [];
  let room = width - 1;
  for (const segment of segments) {
    if (room <= 0) break;
    const taken = takeWidth(segment.text, room);
    out.push({ ...segment, text: taken.text });
    room -= displayWidth(segment.text);
  }
  out.push({ text: "…" });
  return out;
}

function paint(segments: Segment[], color: boolean): string {
  return segments.map((s) => (color && s.style && s.text.trim() ? `${ANSI[s.style][0]}${s.text}${ANSI[s.style][1]}` : s.text)).join("");
}

/** Terminal columns of a rendered line: ANSI escapes take none, wide characters and emoji two. */
export function visibleWidth(line: string): number {
  // eslint-disable-next-line no-control-regex
  return displayWidth(line.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, ""));
}
