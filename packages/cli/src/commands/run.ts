import { parseArgs } from "node:util";
import { anthropic, builtinTools, isKeenError, LocalWorkspace, startRun, type Model, type Run } from "@keen/agent-core";
import { UsageError, type Io } from "../cli-error.js";
import { describeEvent } from "../render.js";

export const RUN_HELP = `Usage: keen run "<vision>" [options]

Runs one agent on a git repository until it is done, then commits its work.

Options:
  --repo DIR         the git repository to work in (default: current directory)
  --model ID         Claude model id (default: claude-sonnet-5-5, or KEEN_MODEL)
  --max-turns N      most model turns (default 50)
  --no-commit        leave the changes uncommitted
  --json             print every event as one JSON line on stdout
  -h, --help         show this help

Environment: ANTHROPIC_API_KEY (required), ANTHROPIC_BASE_URL (optional).`;

export const DEFAULT_MODEL = "claude-sonnet-5-5";

export interface RunCommandOptions {
  /** Use this model instead of building one from flags and the environment (e.g. `keen demo`). */
  model?: Model;
}

export async function runCommand(argv: string[], io: Io, options: RunCommandOptions = {}): Promise<number> {
  const { values, positionals } = parseFlags(argv);
  if (values.help) {
    io.stdout(`${RUN_HELP}\n`);
    return 0;
  }
  const vision = positionals.join(" ").trim();
  if (!vision) throw new UsageError('missing the vision: keen run "<what to do>" --repo DIR');
  const maxTurns = values["max-turns"] === undefined ? 50 : Number(values["max-turns"]);
  if (!Number.isInteger(maxTurns) || maxTurns < 1) throw new UsageError(`--max-turns must be a positive integer, got "${values["max-turns"]}"`);

  const model = options.model ?? buildModel(values.model ?? io.env.KEEN_MODEL ?? DEFAULT_MODEL, io.env);
  const workspace = await openRepo(values.repo ?? process.cwd());

  const run = startRun({ vision, workspace, model, tools: builtinTools(), maxTurns, commit: !values["no-commit"] });
  const stopOnSignal = () => run.abort("interrupted");
  process.once("SIGINT", stopOnSignal);
  process.once("SIGTERM", stopOnSignal);
  try {
    await printEvents(run, io, Boolean(values.json));
    const result = await run.result;
    if (result.status === "success") return 0;
    if (!values.json) io.stderr(`keen: run ${result.status}: ${result.error?.message ?? result.summary}\n`);
    return 1;
  } finally {
    process.off("SIGINT", stopOnSignal);
    process.off("SIGTERM", stopOnSignal);
  }
}

async function printEvents(run: Run, io: Io, json: boolean): Promise<void> {
  for await (const event of run) {
    if (json) {
      io.stdout(`${JSON.stringify(event)}\n`);
    } else {
      const line = describeEvent(event);
      if (line) io.stdout(`${line}\n`);
    }
  }
}

function parseFlags(argv: string[]) {
  try {
    return parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        repo: { type: "string" },
        model: { type: "string" },
        "max-turns": { type: "string" },
        "no-commit": { type: "boolean" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    throw new UsageError(`${(error as Error).message.split("\n")[0]} (see keen run --help)`);
  }
}

function buildModel(id: string, env: NodeJS.ProcessEnv): Model {
  const apiKey = env.ANTHROPIC_API_KEY;
  if (!apiKey) throw new UsageError("ANTHROPIC_API_KEY is not set (export it, or try the offline `keen demo`)");
  return anthropic({ model: id, apiKey, ...(env.ANTHROPIC_BASE_URL ? { baseURL: env.ANTHROPIC_BASE_URL } : {}) });
}

async function openRepo(dir: string) {
  try {
    return await LocalWorkspace.open(dir);
  } catch (error) {
    if (isKeenError(error)) throw new UsageError(error.message);
    throw error;
  }
}
