import { createRequire } from "node:module";
import { UsageError, processIo, type Io } from "./cli-error.js";
import { demoCommand } from "./commands/demo.js";
import { runCommand } from "./commands/run.js";
import { serveCommand, migrateCommand, workerCommand } from "./commands/server.js";

const HELP = `keen: autonomous coding agents on your git repositories

Usage: keen <command> [options]

Commands:
  run "<vision>"    run a tree of agents on a repository (needs ANTHROPIC_API_KEY)
  run --resume FILE continue an interrupted run from its snapshot
  demo              watch a scripted agent tree work offline on a sample repository
  serve             start the keen server (REST API, event streams, run workers)
  migrate           bring the server's database up to date
  worker            execute server runs alone, against DATABASE_URL
  help              show this help

Examples:
  keen run "Add input validation to the signup form" --repo ~/code/app --validate "npm test"
  keen run --resume ~/code/app/.git/keen/runs/run_….json
  keen demo

Run "keen <command> --help" for a command's options.`;

/**
 * Runs the keen command line and resolves to its exit code: 0 on success, 1 when a run
 * fails, 2 for a usage error (printed as one line), 130 when interrupted.
 *
 * @example
 * process.exitCode = await main(["demo", "--json"]);
 */
export async function main(argv: string[], io: Io = processIo): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case "run":
        return await runCommand(rest, io);
      case "demo":
        return await demoCommand(rest, io);
      case "serve":
        return await serveCommand(rest, io);
      case "migrate":
        return await migrateCommand(rest, io);
      case "worker":
        return await workerCommand(rest, io);
      case undefined:
      case "help":
      case "--help":
      case "-h":
        io.stdout(`${HELP}\n`);
        return 0;
      case "--version":
      case "-v":
        io.stdout(`${version()}\n`);
        return 0;
      default:
        throw new UsageError(`unknown command "${command}" (see keen help)`);
    }
  } catch (error) {
    if (error instanceof UsageError) {
      io.stderr(`keen: ${error.message}\n`);
      return 2;
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
