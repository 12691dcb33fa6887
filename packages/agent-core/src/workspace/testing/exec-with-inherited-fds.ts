/**
 * Runs one sandboxed command from a process that inherited file descriptors, as keen does when
 * its launcher leaks them: `node --import tsx exec-with-inherited-fds.ts <repo> <command>`.
 * Prints the command's output.
 */
import { LocalWorkspace } from "../local-workspace.js";

const [repo, command] = process.argv.slice(2) as [string, string];
const workspace = await LocalWorkspace.open(repo, { recovery: false });
const result = await workspace.exec(command);
process.stdout.write(result.output);
