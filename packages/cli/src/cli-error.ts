import { terminalText } from "./terminal-text.js";

/** An error the user caused (bad flag, missing key, wrong folder): printed as one line, exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** Where the CLI writes; injectable so commands can be embedded. */
export interface Io {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  env: NodeJS.ProcessEnv;
  /** True when stdout is a terminal (live views, colours). */
  isTTY: boolean;
  /** Width of the terminal, when stdout is one (read again before every redraw). */
  columns?: () => number | undefined;
  /** Reads all of standard input (for `keen run -`). */
  readStdin?: () => Promise<string>;
}

export const processIo: Io = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  env: process.env,
  isTTY: Boolean(process.stdout.isTTY),
  columns: () => process.stdout.columns,
  readStdin: async () => {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString("utf8");
  },
};

/**
 * The {@link Io} commands write through: `stdout` and `stderr` carry text for humans and escape
 * every control character in it (see {@link terminalText}), whatever it came from — a title,
 * model text, a file name, an error message. `raw` writes stdout unfiltered, for the two outputs
 * that are not plain text: NDJSON (`--json`, escaped by JSON itself) and the live view's own
 * cursor sequences (its frames are escaped field by field).
 */
export interface CommandIo extends Io {
  raw: (text: string) => void;
}

/**
 * Wraps an {@link Io} so that nothing printed for humans can act on the terminal.
 *
 * @example
 * const io = humanIo(processIo);
 * io.stderr("keen: \x1b[2J\n"); // prints `keen: \x1b[2J` as text
 */
export function humanIo(io: Io): CommandIo {
  if ("raw" in io) return io as CommandIo;
  return { ...io, stdout: (text) => io.stdout(terminalText(text)), stderr: (text) => io.stderr(terminalText(text)), raw: io.stdout };
}

/** Exit code when the model endpoint refuses the key or cannot be reached. */
export const MODEL_UNAVAILABLE_EXIT_CODE = 3;

/** The endpoint is unusable: the key is refused, or nothing answers at the URL. */
export class ModelUnavailableError extends Error {
  constructor(
    message: string,
    readonly url: string,
  ) {
    super(message);
    this.name = "ModelUnavailableError";
  }
}
