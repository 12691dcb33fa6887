import { z } from "zod";
import { defineTool } from "../define-tool.js";

/** Files larger than this are skipped by search. */
const MAX_SEARCH_BYTES = 1_000_000;

export const searchFilesTool = defineTool({
  name: "search_files",
  description:
    "Search file contents with a JavaScript regular expression. Output lines look like `path:line: text`. Narrow with a glob; binary and very large files are skipped.",
  input: z.object({
    pattern: z.string().min(1).describe("Regular expression (JavaScript syntax)"),
    glob: z.string().optional().describe("Only search files matching this glob"),
    case_insensitive: z.boolean().optional(),
    max_results: z.number().int().min(1).max(2000).optional().describe("Default 200"),
  }),
  readOnly: true,
  async execute({ pattern, glob, case_insensitive, max_results }, { workspace, signal }) {
    let regex: RegExp;
    try {
      regex = new RegExp(pattern, case_insensitive ? "i" : "");
    } catch (error) {
      return { content: `Invalid regular expression: ${(error as Error).message}`, isError: true };
    }
    const max = max_results ?? 200;
    const files = await workspace.listFiles({ ...(glob ? { pattern: glob } : {}), limit: 100_000 });
    const hits: string[] = [];
    for (const file of files) {
      if (signal.aborted || hits.length > max) break;
      let text: string;
      try {
        // Capped before loading: a large file (or a FIFO) is skipped without being read.
        text = await workspace.readFile(file, { maxBytes: MAX_SEARCH_BYTES, signal });
      } catch {
        continue;
      }
      if (text.includes("\0")) continue;
      const lines = text.split("\n");
      for (let i = 0; i < lines.length && hits.length <= max; i++) {
        if (regex.test(lines[i]!)) hits.push(`${file}:${i + 1}: ${lines[i]!.slice(0, 300)}`);
      }
    }
    if (hits.length === 0) return `No matches for /${pattern}/${glob ? ` in ${glob}` : ""}`;
    const cut = hits.length > max;
    return `${hits.slice(0, max).join("\n")}${cut ? `\n[… more than ${max} matches; refine the pattern]` : ""}`;
  },
});
