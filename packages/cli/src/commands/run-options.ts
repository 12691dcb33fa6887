import { parseCommandArgs } from "../args.js";

// `keen run`'s help and flags, apart from the command itself: `keen run --help` and
// `keen help run` answer from here without loading agent-core or the SDK.

export const RUN_HELP = `Usage: keen run "<vision>" [options]
       keen run - [options]                 (the vision from standard input)
       keen run --resume FILE|ID [--repo DIR]
       keen run --last [--repo DIR]         (resume the newest interrupted run)

Runs the full lifecycle on a git repository: the root agent explores, plans, hands subtasks
to child agents on their own branches, merges their work back with validation, and commits.
Everything happens on a new run branch (keen/<short run id>) in its own worktree: your working
tree, index, stash and current branch are never touched. On a terminal the tree is shown live.

Options:
  --repo DIR             the git repository to work in (default: current directory)
  --model ID             Claude model id (default: claude-sonnet-5-5, or KEEN_MODEL)
  --max-depth N          deepest level of child agents; 0 means no children (default 2)
  --max-children N       most children per agent (default 4)
  --max-agents N         most agents in the whole tree, root included (default 10)
  --max-turns N          most model turns per phase per agent (default 30)
  --token-budget N       stop every agent once the run has used N tokens
  --concurrency N        children of one agent that run at the same time (default 2)
  --validate CMD         command run after every merge and before an agent completes
  --on-conflict POLICY   resolve (the parent model fixes it) or rollback (default resolve)
  --sandbox              run commands under bubblewrap: no network, only the worktree writable (default)
  --no-sandbox           run commands without the sandbox
  --sandbox-read PATH    also show PATH read-only inside the sandbox (repeatable; by default it shows
                         only system tool folders and the worktree, no home folders)
  --branch NAME          the run branch to create (default keen/<short run id>); must not exist
  --base REF             the commit the run branch starts from (default HEAD)
  --include-uncommitted  copy your uncommitted and untracked (non-ignored) files into the run
                         branch as its first commit (otherwise the run sees only commits)
  --apply                when the run succeeds, merge its branch into your current branch, only
                         if that checkout is clean (otherwise say why and how to take it)
  --max-budget-usd N     stop every agent once the run has cost N US dollars (keen's price table)
  --max-retries N        retries of a failed model request (overload, rate limit, network) before
                         the run stops (default 10, within two minutes; 0 disables them)
  --snapshot FILE        where to keep the run's snapshot (default <repo>/.git/keen/runs/<run id>.json)
  --resume FILE|ID       continue a saved run: its snapshot file, or its id (see keen runs)
  --last                 continue the newest interrupted run of the repository
  --json                 print every event as one JSON line on stdout, and nothing else
  -h, --help             show this help

Before anything is written, one count_tokens request checks the endpoint and the key.
Exit codes: 0 success, 1 the task failed, 2 bad usage, 3 the model endpoint refused the key
or cannot be reached, 130 interrupted (resumable).
Environment: ANTHROPIC_API_KEY (required), ANTHROPIC_BASE_URL, KEEN_MODEL, KEEN_FORCE_TTY=1|0.`;

export const DEFAULT_MODEL = "claude-sonnet-5-5";

/** Flags that shape a run; a resumed run keeps the values in its snapshot. */
export const RUN_SHAPE_FLAGS = ["max-depth", "max-children", "max-agents", "max-turns", "token-budget", "max-budget-usd", "concurrency", "validate", "on-conflict", "branch", "base", "include-uncommitted"] as const;

export const RUN_OPTIONS = {
  repo: { type: "string" },
  model: { type: "string" },
  "max-depth": { type: "string" },
  "max-children": { type: "string" },
  "max-agents": { type: "string" },
  "max-turns": { type: "string" },
  "token-budget": { type: "string" },
  concurrency: { type: "string" },
  validate: { type: "string" },
  "on-conflict": { type: "string" },
  sandbox: { type: "boolean" },
  "no-sandbox": { type: "boolean" },
  "sandbox-read": { type: "string", multiple: true },
  "max-retries": { type: "string" },
  "max-budget-usd": { type: "string" },
  branch: { type: "string" },
  base: { type: "string" },
  "include-uncommitted": { type: "boolean" },
  apply: { type: "boolean" },
  snapshot: { type: "string" },
  resume: { type: "string" },
  last: { type: "boolean" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

/** True when `keen run ARGS` asks for its help (flags are checked as the command checks them). */
export function wantsRunHelp(argv: string[]): boolean {
  return parseCommandArgs(argv, RUN_OPTIONS, "run").values.help === true;
}
