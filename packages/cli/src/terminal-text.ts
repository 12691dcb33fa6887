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
