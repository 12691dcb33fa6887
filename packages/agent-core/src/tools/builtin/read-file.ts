import * as z from "zod";
import { isKeenError } from "../../errors.js";
import { defineTool } from "../define-tool.js";

/** Longest file content returned in one call, in characters. */
export const READ_LIMIT_CHARS = 200_000;
/** Largest file read_file loads at all; bigger ones are refused before any of it is read. */
export const READ_MAX_BYTES = 16 * 1024 * 1024;

export const readFileTool = defineTool({
  name: "read_file",
  description:
    "Read a text file from the repository. Lines come numbered (`  12\\tcode`). For long files pass `offset` (1-based first line) and `limit` (number of lines) to read a window.",
  input: z.object({
    path: z.string().min(1).describe("Path relative to the repository root"),
    offset: z.number().int().min(1).optional().describe("First line to return, 1-based"),
    limit: z.number().int().min(1).optional().describe("Number of lines to return"),
    char_offset: z.number().int().min(0).optional().describe("Characters to skip in the first line"),
  }),
  readOnly: true,
  async execute({ path, offset, limit, char_offset }, { workspace, signal }) {
    let text: string;
    try {
      text = await workspace.readFile(path, { maxBytes: READ_MAX_BYTES, signal });
    } catch (error) {
      if (isKeenError(error, "file_too_large")) {
        return { content: `${path} is larger than ${READ_MAX_BYTES} bytes; read_file does not load it. Use run_command with head, tail or sed to look at parts of it.`, isError: true };
      }
      throw error;
    }
    if (text.includes("\0")) return { content: `${path} looks like a binary file; read_file only shows text`, isError: true };
    const lines = text.split("\n");
    if (lines.at(-1) === "") lines.pop();
    if (lines.length === 0) return `${path} is empty`;
    const start = (offset ?? 1) - 1;
    if (start >= lines.length) {
      return { content: `${path} has ${lines.length} lines; offset ${offset} is past the end`, isError: true };
    }
    const skip = char_offset ?? 0;
    if (skip > 0 && skip >= lines[start]!.length) {
      return { content: `Line ${start + 1} of ${path} has ${lines[start]!.length} characters; char_offset ${skip} is past its end`, isError: true };
    }
    const window = lines.slice(start, limit ? start + limit : undefined);
    const width = String(start + window.length).length;
    let out = "";
    let shown = 0;
    for (const [i, whole] of window.entries()) {
      const lineNumber = start + i + 1;
      const from = i === 0 ? skip : 0;
      const line = from > 0 ? whole.slice(from) : whole;
      const prefix = `${String(lineNumber).padStart(width)}\t`;
      const numbered = `${prefix}${line}\n`;
      if (out.length + numbered.length <= READ_LIMIT_CHARS) {
        out += numbered;
        shown++;
        continue;
      }
      if (shown > 0) break;
      // One line longer than a page: page through it by characters.
      let chunk = line.slice(0, Math.max(1, READ_LIMIT_CHARS - prefix.length - 1));
      // Never split a surrogate pair.
      if (/[\uD800-\uDBFF]$/.test(chunk) && chunk.length > 1) chunk = chunk.slice(0, -1);
      const next = from + chunk.length;
      return `${prefix}${chunk}\n[… line ${lineNumber} has ${whole.length} characters; this shows characters ${from}–${next}. Read on with offset ${lineNumber} and char_offset ${next}.]\n`;
    }
    if (shown < window.length) {
      out += `[… cut at line ${start + shown}; ${lines.length} lines in all. Read on with offset ${start + shown + 1}.]\n`;
    }
    return out;
  },
});
