// Preload (`node --import`) for process tests: appends one line per git process the command
// starts itself to the file named by KEEN_SPAWN_LOG (`git <subcommand>`, keen's `-c` settings left
// out), so a test can count them. Processes git starts on its own are not seen.
import childProcess from "node:child_process";
import { appendFileSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";

if (process.env.KEEN_SPAWN_LOG) {
  const log = process.env.KEEN_SPAWN_LOG;
  const spawn = childProcess.spawn;
  childProcess.spawn = function (command, args, ...rest) {
    if (command === "git" && Array.isArray(args)) {
      const subcommand = args.find((arg, i) => arg !== "-c" && args[i - 1] !== "-c") ?? "";
      appendFileSync(log, `git ${subcommand}\n`);
    }
    return spawn.call(this, command, args, ...rest);
  };
  syncBuiltinESMExports();
}
