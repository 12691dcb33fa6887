import stringWidth from "string-width";

/**
 * Characters that must never reach a terminal raw from text keen did not write itself (titles,
 * model text, file names, error messages): C0 controls (ESC starts cursor moves, screen clears
 * and title changes; BEL, NUL, CR overwrite or hide text), DEL, C1 controls (U+009B is a
 * one-byte CSI on some terminals), Unicode line separators, bidi overrides and isolates (they
 * reorder what follows, so a file name can read as another), and lone surrogates.
 * Newline and tab are handled by the callers' mode.
 */
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

function escapeChar(char: string): string {
  const code = char.charCodeAt(0);
  return code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
}

/**
 * Makes text safe to print for a human on a terminal: every control character, bidi override
 * and lone surrogate is shown as a visible escape (`\x1b`, `\u202e`) instead of acting on the
 * terminal. Newlines stay, tabs become two spaces. `--json` output does not go through this:
 * JSON has its own escaping.
 *
 * @example
 * terminalText("done\x1b]0;pwned\x07"); // "done\\x1b]0;pwned\\x07"
 */
export function terminalText(text: string): string {
  return text.replace(/\t/g, "  ").replace(UNSAFE, escapeChar);
}

/**
 * {@link terminalText} for a single line: newlines (and CRLF) become spaces as well, so a title
 * or branch name can never add a row to a table or a live view.
 *
 * @example
 * terminalLine("Fix\nthe bug"); // "Fix the bug"
 */
export function terminalLine(text: string): string {
  return terminalText(text.replace(/\r?\n/g, " "));
}

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
