import { createRequire } from "node:module";
import { closestOption } from "./args.js";
import { humanIo, MODEL_UNAVAILABLE_EXIT_CODE, ModelUnavailableError, UsageError, processIo, type CommandIo, type Io } from "./cli-error.js";
import { adminCommand, migrateCommand, serveCommand, workerCommand } from "./commands/server.js";

const HELP = `keen: autonomous coding agents on your git repositories

Usage: keen <command> [options]

Commands:
  run "<vision>"       run a tree of agents on a repository (needs ANTHROPIC_API_KEY)
  run -                the same, reading the vision from standard input
  run --resume FILE|ID continue an interrupted run (--last: the newest one)
  runs                 list the runs saved in a repository (--prune removes finished ones)
  demo                 watch a scripted agent tree work offline on a sample repository
  serve                start the keen server (REST API, event streams, run workers)
  migrate              bring the server's database up to date
  worker               execute server runs alone, against DATABASE_URL
  admin                verify an account's email, or erase one squatting an address
  help [COMMAND]       show this help, or a command's

Examples:
  keen run "Add input validation to the signup form" --repo ~/code/app --validate "npm test"
  keen run --last --repo ~/code/app
  keen demo

Run "keen help <command>" for a command's options.`;

/**
 * Each command's module, loaded when that command runs (or its help is asked for): `keen
 * --version` and `keen help` load none of them, and with them neither agent-core nor the SDK.
 */
const COMMANDS: Record<string, () => Promise<{ help: string; command: (argv: string[], io: CommandIo) => Promise<number> }>> = {
  run: async () => {
    const { RUN_HELP, wantsRunHelp } = await import("./commands/run-options.js");
    const command = async (argv: string[], io: CommandIo) => {
      if (!wantsRunHelp(argv)) return (await import("./commands/run.js")).runCommand(argv, io);
      io.stdout(`${RUN_HELP}\n`);
      return 0;
    };
    return { help: RUN_HELP, command };
  },
  runs: async () => {
    const { RUNS_HELP, runsCommand } = await import("./commands/runs.js");
    return { help: RUNS_HELP, command: runsCommand };
  },
  demo: async () => {
    const { DEMO_HELP, demoCommand } = await import("./commands/demo.js");
    return { help: DEMO_HELP, command: demoCommand };
  },
};
/** The server's commands print their own help, built from the server's settings. */
const SERVER_COMMANDS: Record<string, (argv: string[], io: Io) => Promise<number>> = {
  serve: serveCommand,
  migrate: migrateCommand,
  worker: workerCommand,
  admin: adminCommand,
};

/**
 * Runs the keen command line and resolves to its exit code: 0 on success, 1 when a run
 * fails, 2 for a usage error (printed as one line), 3 when the model endpoint refuses the key
 * or cannot be reached, 130 when interrupted.
 *
 * @example
 * process.exitCode = await main(["demo", "--json"]);
 */
export async function main(argv: string[], output: Io = processIo): Promise<number> {
  const io = humanIo(output);
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case "run":
      case "demo":
      case "runs":
        return await (await COMMANDS[command]!()).command(rest, io);
      case "serve":
      case "migrate":
      case "worker":
      case "admin":
        return await SERVER_COMMANDS[command]!(rest, io);
      case "help": {
        const topic = rest[0];
        if (topic === undefined) {
          io.stdout(`${HELP}\n`);
          return 0;
        }
        if (Object.hasOwn(SERVER_COMMANDS, topic)) return await SERVER_COMMANDS[topic]!(["--help"], io);
        if (!Object.hasOwn(COMMANDS, topic)) throw new UsageError(`no help for "${topic}": the commands are ${[...Object.keys(COMMANDS), ...Object.keys(SERVER_COMMANDS)].join(", ")}`);
        io.stdout(`${(await COMMANDS[topic]!()).help}\n`);
        return 0;
      }
      case undefined:
      case "--help":
      case "-h":
        io.stdout(`${HELP}\n`);
        return 0;
      case "--version":
      case "-v":
        io.stdout(`${version()}\n`);
        return 0;
      default: {
        const commands = [...Object.keys(COMMANDS), ...Object.keys(SERVER_COMMANDS)];
        const near = closestOption(command, Object.fromEntries(commands.map((name) => [name, { type: "boolean" as const }])));
        throw new UsageError(`unknown command "${command}"${near ? ` (did you mean ${near.slice(2)}?)` : ""} (see keen help)`);
      }
    }
  } catch (error) {
    if (error instanceof UsageError) {
      io.stderr(`keen: ${error.message}\n`);
      return 2;
    }
    if (error instanceof ModelUnavailableError) {
      io.stderr(`keen: ${error.message}\n`);
      return MODEL_UNAVAILABLE_EXIT_CODE;
    }
    io.stderr(`keen: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  }
}

function version(): string {
  const require = createRequire(import.meta.url);
  for (const path of ["../package.json", "../../package.json"]) {
    try {
      const pkg = require(path) as { name?: string; version?: string };
      if (pkg.name === "@keen/cli") return pkg.version ?? "0.0.0";
    } catch {
      // Try the next layout (source vs built).
    }
  }
  return "0.0.0";
}
