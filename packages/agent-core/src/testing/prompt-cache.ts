import { createHash } from "node:crypto";

/** Tokens are estimated as one per four characters of a block's text, rounded up (at least 1). */
export function estimateTokens(text: string): number {
  return Math.max(1, Math.ceil(text.length / 4));
}

/** Blocks are compared without their cache_control markers, with keys in a fixed order. */
export function canonical(value: unknown): string {
  return JSON.stringify(value, (key, inner) => (key === "cache_control" ? undefined : sortKeys(inner)));
}

function sortKeys(value: unknown): unknown {
  if (!value || typeof value !== "object" || Array.isArray(value)) return value;
  return Object.fromEntries(Object.entries(value as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b)));
}

export interface PrefixBlock {
  tokens: number;
  /** Hash of this block and everything before it. */
  prefixHash: string;
  /** The block carries `cache_control`. */
  breakpoint: boolean;
}

/**
 * Smallest prefix (in tokens) the API caches for a model, as Anthropic documents it: a shorter
 * prefix is processed without being cached, even at a breakpoint.
 */
export function minCacheableTokens(model: string): number {
  if (/haiku-4-5|opus-4-[56]/.test(model)) return 4096;
  if (/haiku/.test(model)) return 2048;
  if (/opus-5/.test(model)) return 512;
  return 1024;
}

/**
 * Flattens a Messages API request into the order the API caches it in: tools, then system
 * blocks, then each message's content blocks. Changing \`tool_choice\` or the thinking settings
 * keeps tools and system cached but not the messages, so both are part of the first message
 * block's key.
 */
export function flattenRequest(body: Record<string, any>): PrefixBlock[] {
  const raw: Array<{ value: unknown; text: string; breakpoint: boolean }> = [];
  for (const tool of (body.tools as unknown[] | undefined) ?? []) {
    raw.push({ value: tool, text: canonical(tool), breakpoint: hasCacheControl(tool) });
  }
  const system = body.system;
  if (typeof system === "string") raw.push({ value: system, text: system, breakpoint: false });
  else for (const block of (system as any[] | undefined) ?? []) raw.push({ value: block, text: block?.text ?? canonical(block), breakpoint: hasCacheControl(block) });
  let first = true;
  for (const message of (body.messages as any[] | undefined) ?? []) {
    const content = typeof message.content === "string" ? [{ type: "text", text: message.content }] : (message.content ?? []);
    for (const block of content) {
      const value = first ? { role: message.role, block, settings: { tool_choice: body.tool_choice ?? null, thinking: body.thinking ?? null } } : { role: message.role, block };
      first = false;
      raw.push({ value, text: blockText(block), breakpoint: hasCacheControl(block) });
    }
  }
  let hash = createHash("sha256").update(String(body.model ?? "")).digest("hex");
  return raw.map((item) => {
    hash = createHash("sha256").update(hash).update(canonical(item.value)).digest("hex");
    return { tokens: estimateTokens(item.text), prefixHash: hash, breakpoint: item.breakpoint };
  });
}

function blockText(block: any): string {
  switch (block?.type) {
    case "text":
      return String(block.text ?? "");
    case "thinking":
      return String(block.thinking ?? "");
    case "redacted_thinking":
      return String(block.data ?? "");
    case "tool_use":
      return `${block.name}${JSON.stringify(block.input ?? {})}`;
    case "tool_result":
      return typeof block.content === "string" ? block.content : canonical(block.content);
    default:
      return canonical(block);
  }
}

function hasCacheControl(value: unknown): boolean {
  return Boolean(value && typeof value === "object" && (value as { cache_control?: unknown }).cache_control);
}

export interface CacheUsage {
  input_tokens: number;
  cache_creation_input_tokens: number;
  cache_read_input_tokens: number;
}

/** How far before a breakpoint the API looks for an earlier cache entry. */
export const CACHE_LOOKBACK_BLOCKS = 20;
/** Lifetime of an ephemeral cache entry, refreshed on every read. */
export const CACHE_TTL_MS = 5 * 60 * 1000;

/**
 * Simulated prompt cache: entries are written at breakpoints; a request reads the longest
 * live entry found at a breakpoint or up to 20 blocks before one; prefixes at its breakpoints
 * beyond what it read are written (and billed as cache writes).
 */
export class PromptCache {
  private readonly entries = new Map<string, number>();
  constructor(
    private readonly now: () => number,
    /** Smallest cached prefix; default the documented minimum of each request's model. */
    private readonly minTokens?: number,
  ) {}

  account(blocks: PrefixBlock[], model = ""): CacheUsage {
    const now = this.now();
    const minTokens = this.minTokens ?? minCacheableTokens(model);
    const cumulative: number[] = [];
    let sum = 0;
    for (const block of blocks) cumulative.push((sum += block.tokens));
    const total = sum;
    const breakpoints = blocks.flatMap((block, i) => (block.breakpoint ? [i] : []));

    let hit = -1;
    for (const point of breakpoints) {
      for (let j = point; j >= Math.max(0, point - (CACHE_LOOKBACK_BLOCKS - 1)); j--) {
        const expires = this.entries.get(blocks[j]!.prefixHash);
        if (expires !== undefined && expires > now) {
          hit = Math.max(hit, j);
          break;
        }
      }
    }
    const read = hit >= 0 ? cumulative[hit]! : 0;
    if (hit >= 0) this.entries.set(blocks[hit]!.prefixHash, now + CACHE_TTL_MS);

    let written = read;
    for (const point of breakpoints) {
      if (point <= hit || cumulative[point]! < minTokens) continue;
      this.entries.set(blocks[point]!.prefixHash, now + CACHE_TTL_MS);
      written = Math.max(written, cumulative[point]!);
    }
    return {
      input_tokens: total - written,
      cache_creation_input_tokens: written - read,
      cache_read_input_tokens: read,
    };
  }
}
