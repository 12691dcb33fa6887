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
}

export const processIo: Io = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  env: process.env,
  isTTY: Boolean(process.stdout.isTTY),
  columns: () => process.stdout.columns,
};
