import * as z from "zod";
import { defineTool } from "../define-tool.js";

export const editFileTool = defineTool({
  name: "edit_file",
  description:
    "Replace an exact string in a file. `old_string` must match the file exactly (whitespace included) and be unique unless `replace_all` is true; include enough surrounding lines to make it unique.",
  journaled: true,
  input: z.object({
    path: z.string().min(1),
    old_string: z.string().min(1).describe("Exact text to replace"),
    new_string: z.string().describe("Replacement text"),
    replace_all: z.boolean().optional().describe("Replace every occurrence"),
  }),
  async execute({ path, old_string, new_string, replace_all }, { workspace, signal }) {
    if (old_string === new_string) return { content: "old_string and new_string are identical; nothing to change", isError: true };
    const text = await workspace.readFile(path, { signal });
    const count = countOccurrences(text, old_string);
    if (count === 0) return { content: `old_string was not found in ${path}; read the file and copy the text exactly`, isError: true };
    if (count > 1 && !replace_all) {
      return { content: `old_string occurs ${count} times in ${path}; add surrounding lines to make it unique, or set replace_all`, isError: true };
    }
    const updated = replace_all ? text.split(old_string).join(new_string) : text.replace(old_string, () => new_string);
    await workspace.writeFile(path, updated);
    return `Edited ${path}: replaced ${replace_all ? count : 1} occurrence${(replace_all ? count : 1) === 1 ? "" : "s"}`;
  },
});

function countOccurrences(text: string, needle: string): number {
  let count = 0;
  for (let i = text.indexOf(needle); i !== -1; i = text.indexOf(needle, i + needle.length)) count++;
  return count;
}
