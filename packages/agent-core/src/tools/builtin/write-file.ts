import * as z from "zod";
import { defineTool } from "../define-tool.js";

export const writeFileTool = defineTool({
  name: "write_file",
  description:
    "Create a file or replace its whole content. Parent folders are created. Prefer edit_file for changing part of an existing file.",
  journaled: true,
  input: z.object({
    path: z.string().min(1).describe("Path relative to the repository root"),
    content: z.string().describe("The complete new content"),
  }),
  async execute({ path, content }, { workspace }) {
    const existed = await workspace.exists(path);
    await workspace.writeFile(path, content);
    const lines = content === "" ? 0 : content.split("\n").length - (content.endsWith("\n") ? 1 : 0);
    return `${existed ? "Replaced" : "Created"} ${path} (${lines} lines)`;
  },
});
