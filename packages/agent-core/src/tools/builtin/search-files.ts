import { Worker } from "node:worker_threads";
import * as z from "zod";
import { defineTool } from "../define-tool.js";

/** Files larger than this are skipped by search. */
const MAX_SEARCH_BYTES = 1_000_000;
/** Longest a whole search may spend matching. */
const SEARCH_TIME_MS = 10_000;

const MATCHER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const regex = new RegExp(workerData.pattern, workerData.flags);
parentPort.on("message", ({ text, max }) => {
  const found = [];
  const lines = text.split("\\n");
  for (let i = 0; i < lines.length && found.length < max; i++) if (regex.test(lines[i])) found.push([i, lines[i].slice(0, 300)]);
  parentPort.postMessage(found);
});
`;

/** Matches lines on a worker thread, which is terminated when a deadline passes. */
class LineMatcher {
  private worker: Worker | undefined;
  constructor(private readonly pattern: string, private readonly flags: string) {}

  match(text: string, max: number, remainingMs: number, signal: AbortSignal): Promise<Array<[number, string]> | "timeout"> {
    if (remainingMs <= 0) return Promise.resolve("timeout");
    const worker = (this.worker ??= new Worker(MATCHER_SOURCE, { eval: true, workerData: { pattern: this.pattern, flags: this.flags } }));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        void this.close();
        resolve("timeout");
      }, remainingMs);
      const onMessage = (found: Array<[number, string]>) => {
        cleanup();
        resolve(found);
      };
      const onError = (error: Error) => {
        cleanup();
        this.worker = undefined;
        reject(error);
      };
      const onAbort = () => {
        cleanup();
        void this.close();
        resolve([]);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      const cleanup = () => {
        signal.removeEventListener("abort", onAbort);
        clearTimeout(timer);
        worker.off("message", onMessage);
        worker.off("error", onError);
      };
      worker.on("message", onMessage);
      worker.on("error", onError);
      worker.postMessage({ text, max });
    });
  }

  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    if (worker) await worker.terminate();
  }
}

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
    try {
      new RegExp(pattern, case_insensitive ? "i" : "");
    } catch (error) {
      return { content: `Invalid regular expression: ${(error as Error).message}`, isError: true };
    }
    const max = max_results ?? 200;
    const files = await workspace.listFiles({ ...(glob ? { pattern: glob } : {}), limit: 100_000 });
    const hits: string[] = [];
    // The pattern is the model's and JavaScript's engine backtracks: `(a+)+b` on a line of forty
    // `a`s runs for hours. Matching happens on a worker thread that is stopped at a deadline, so
    // one pattern cannot stall the thread every agent shares.
    const matcher = new LineMatcher(pattern, case_insensitive ? "i" : "");
    const deadline = Date.now() + SEARCH_TIME_MS;
    try {
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
        const found = await matcher.match(text, max + 1 - hits.length, deadline - Date.now(), signal);
        if (found === "timeout") {
          return {
            content: `The regular expression /${pattern}/ took longer than ${SEARCH_TIME_MS / 1000} s (it backtracks too much, e.g. nested quantifiers like (a+)+). Use a simpler pattern.`,
            isError: true,
          };
        }
        for (const [index, line] of found) hits.push(`${file}:${index + 1}: ${line.slice(0, 300)}`);
      }
    } finally {
      await matcher.close();
    }
    if (hits.length === 0) return `No matches for /${pattern}/${glob ? ` in ${glob}` : ""}`;
    const cut = hits.length > max;
    return `${hits.slice(0, max).join("\n")}${cut ? `\n[… more than ${max} matches; refine the pattern]` : ""}`;
  },
});
