import stringWidth from "string-width";

// Apart from terminal-text.ts: string-width builds its Unicode tables when it loads, which only
// the table and line views need (every command loads terminal-text.ts through its error output).

const graphemes = new Intl.Segmenter("en", { granularity: "grapheme" });

/**
 * Columns a string takes on a terminal: East Asian wide and fullwidth characters and emoji take
 * two, combining marks and zero-width characters none, ANSI colour sequences none.
 *
 * @example
 * displayWidth("漢字 ok"); // 7
 */
export function displayWidth(text: string): number {
  return stringWidth(text);
}

/**
 * Cuts text to at most `width` columns, ending with an ellipsis when cut. Cuts only between
 * grapheme clusters, so a surrogate pair, an emoji sequence or a letter with its combining marks
 * is kept whole or dropped whole.
 *
 * @example
 * fitWidth("漢字漢字", 5); // "漢字…"
 */
export function fitWidth(text: string, width: number): string {
  if (displayWidth(text) <= width) return text;
  if (width <= 0) return "";
  let out = "";
  let used = 0;
  for (const { segment } of graphemes.segment(text)) {
    const w = displayWidth(segment);
    if (used + w > width - 1) break;
    out += segment;
    used += w;
  }
  return `${out}…`;
}

/**
 * Cuts text to at most `width` columns without an ellipsis (grapheme-safe, like {@link fitWidth}).
 * Returns the text and the columns it takes.
 */
export function takeWidth(text: string, width: number): { text: string; width: number } {
  let out = "";
  let used = 0;
  for (const { segment } of graphemes.segment(text)) {
    const w = displayWidth(segment);
    if (used + w > width) break;
    out += segment;
    used += w;
  }
  return { text: out, width: used };
}

/** Pads text with spaces to `width` columns (by display width, not string length). */
export function padWidth(text: string, width: number): string {
  return text + " ".repeat(Math.max(0, width - displayWidth(text)));
}
