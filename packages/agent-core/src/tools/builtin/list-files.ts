import * as z from "zod";
import { defineTool } from "../define-tool.js";

export const listFilesTool = defineTool({
  name: "list_files",
  description:
    "List files in the repository (files ignored by .gitignore are left out). Filter with a glob such as `src/**/*.ts`. Returns at most `limit` paths (default 500).",
  input: z.object({
    pattern: z.string().optional().describe("Glob relative to the root, e.g. `**/*.md`"),
    limit: z.number().int().min(1).max(5000).optional(),
  }),
  readOnly: true,
  async execute({ pattern, limit }, { workspace }) {
    const max = limit ?? 500;
    const files = await workspace.listFiles({ ...(pattern ? { pattern } : {}), limit: max + 1 });
    // A sparse worktree says what it holds, so an empty answer is not taken for an empty repository.
    const only = workspace.paths ? `[This worktree holds only ${workspace.paths.join(", ")}; nothing else can be read or written]\n` : "";
    if (files.length === 0) return `${only}${pattern ? `No files match ${pattern}` : "The repository has no files"}`;
    const shown = files.slice(0, max);
    return `${only}${shown.join("\n")}${files.length > max ? `\n[… more than ${max} files; narrow the pattern]` : ""}`;
  },
});
