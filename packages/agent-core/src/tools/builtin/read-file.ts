import { z } from "zod";
import { defineTool } from "../define-tool.js";

/** Longest file content returned in one call, in characters. */
export const READ_LIMIT_CHARS = 200_000;

export const readFileTool = defineTool({
  name: "read_file",
  description:
    "Read a text file from the repository. Lines come numbered (`  12\\tcode`). For long files pass `offset` (1-based first line) and `limit` (number of lines) to read a window.",
  input: z.object({
    path: z.string().min(1).describe("Path relative to the repository root"),
    offset: z.number().int().min(1).optional().describe("First line to return, 1-based"),
    limit: z.number().int().min(1).optional().describe("Number of lines to return"),
  }),
  readOnly: true,
  async execute({ path, offset, limit }, { workspace }) {
    const text = await workspace.readFile(path);
    if (text.includes("\0")) return { content: `${path} looks like a binary file; read_file only shows text`, isError: true };
    const lines = text.split("\n");
    if (lines.at(-1) === "") lines.pop();
    const start = (offset ?? 1) - 1;
    if (lines.length > 0 && start >= lines.length) {
      return { content: `${path} has ${lines.length} lines; offset ${offset} is past the end`, isError: true };
    }
    const window = lines.slice(start, limit ? start + limit : undefined);
    const width = String(start + window.length).length;
    let out = "";
    let shown = 0;
    for (const [i, line] of window.entries()) {
      const numbered = `${String(start + i + 1).padStart(width)}\t${line}\n`;
      if (out.length + numbered.length > READ_LIMIT_CHARS) break;
      out += numbered;
      shown++;
    }
    if (lines.length === 0) return `${path} is empty`;
    if (shown < window.length) {
      out += `[… cut at line ${start + shown}; ${lines.length} lines in all. Read on with offset ${start + shown + 1}.]\n`;
    }
    return out;
  },
});
