/** Shared by the CLI's process tests: the `keen` command as a real child process, and sample repositories. */
import { existsSync } from "node:fs";
import { mkdtemp, readdir, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa, type ResultPromise } from "execa";
import { KeenEvent } from "@keen/agent-core";

export const repoRoot = fileURLToPath(new URL("../../../..", import.meta.url));

/**
 * The node arguments that start the `keen` command, from the repo root. After a build (`npm test`
 * builds first and sets `KEEN_TEST_CLI=built`) the tests run the built command users install,
 * `bin/keen.js`; otherwise the sources through tsx (which honours the tsconfig paths), so
 * `vitest run` tests the code as it is now without a build.
 */
const sourceEntry = ["--import", "tsx", fileURLToPath(new URL("../bin.ts", import.meta.url))];
export const keenEntry: readonly string[] = (() => {
  if (process.env.KEEN_TEST_CLI !== "built") return sourceEntry;
  const bin = fileURLToPath(new URL("../../bin/keen.js", import.meta.url));
  const bundle = fileURLToPath(new URL("../../bundle/main.js", import.meta.url));
  if (!existsSync(bundle)) throw new Error(`KEEN_TEST_CLI=built, but ${bundle} is missing: run npm run build first`);
  return [bin];
})();

export const identity = { GIT_AUTHOR_NAME: "t", GIT_AUTHOR_EMAIL: "t@t", GIT_COMMITTER_NAME: "t", GIT_COMMITTER_EMAIL: "t@t" };

export function keen(args: string[], env: Record<string, string | undefined> = {}, options: { timeout?: number; preload?: string; input?: string; fromSource?: boolean } = {}): ResultPromise<{ reject: false }> {
  const preload = options.preload ? ["--import", options.preload] : [];
  return execa(process.execPath, [...preload, ...(options.fromSource ? sourceEntry : keenEntry), ...args], {
    ...(options.input !== undefined ? { input: options.input } : {}),
    cwd: repoRoot,
    reject: false,
    env: { ANTHROPIC_API_KEY: undefined, ANTHROPIC_BASE_URL: undefined, KEEN_FORCE_TTY: undefined, KEEN_MODEL: undefined, ...env },
    extendEnv: true,
    timeout: options.timeout ?? 90_000,
  }) as ResultPromise<{ reject: false }>;
}

/** The URL a `keen serve` child process prints once it listens; rejects if it exits first. */
export function listeningUrl(child: ResultPromise): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    let text = "";
    child.stderr!.on("data", (chunk) => {
      text += String(chunk);
      const match = /listening on (http:\/\/\S+)/.exec(text);
      if (match) resolve(match[1]!);
    });
    void child.then((r) => reject(new Error(`exited early: ${String(r.stderr)}`)));
  });
}

/** A git repository on `main` with the given files committed. */
export async function gitRepo(files: Record<string, string> = { "README.md": "# sample\n" }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "keen-cli-"));
  await execa("git", ["init", "-q", "-b", "main"], { cwd: dir });
  for (const [path, content] of Object.entries(files)) {
    await mkdir(dirname(join(dir, path)), { recursive: true });
    await writeFile(join(dir, path), content);
  }
  await execa("git", ["add", "-A"], { cwd: dir });
  await execa("git", ["commit", "-qm", "init"], { cwd: dir, env: identity });
  return dir;
}

export const git = (dir: string, ...args: string[]) => execa("git", args, { cwd: dir }).then((r) => r.stdout.trim());

export async function branches(dir: string): Promise<string[]> {
  return (await git(dir, "branch", "--format=%(refname:short)")).split("\n").sort();
}

/** Every stdout line must be one event of the schema. */
export function parseNdjson(stdout: string): KeenEvent[] {
  return stdout
    .trim()
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => KeenEvent.parse(JSON.parse(line)));
}

/** The snapshot files a run left in the repository's default location. */
export async function snapshotFiles(dir: string): Promise<string[]> {
  const runs = join(dir, ".git", "keen", "runs");
  return (await readdir(runs)).filter((name) => name.endsWith(".json") && !name.endsWith(".info.json")).map((name) => join(runs, name));
}

/**
 * Runs `keen` on a real pseudo-terminal `columns` wide (through util-linux `script`), so the
 * process sees `isTTY` and the width exactly as in a user's terminal. Returns everything the
 * terminal received.
 */
export function keenOnTerminal(args: string[], env: Record<string, string | undefined> = {}, options: { columns?: number; timeout?: number } = {}) {
  const quoted = args.map((arg) => `'${arg.replace(/'/g, `'\\''`)}'`).join(" ");
  const command = `stty cols ${options.columns ?? 80}; exec ${process.execPath} ${keenEntry.join(" ")} ${quoted}`;
  return execa("script", ["-qfec", command, "/dev/null"], {
    cwd: repoRoot,
    reject: false,
    env: { ANTHROPIC_API_KEY: undefined, ANTHROPIC_BASE_URL: undefined, KEEN_FORCE_TTY: undefined, KEEN_MODEL: undefined, COLUMNS: undefined, ...env },
    extendEnv: true,
    timeout: options.timeout ?? 90_000,
    stdin: "ignore",
  });
}

/** The escape sequences keen's live view writes itself: cursor up, clear line/below, colours, cursor visibility. */
// eslint-disable-next-line no-control-regex
export const OWN_SEQUENCES = /\x1b\[(?:\?25[lh]|\d*A|2K|J|\d+(?:;\d+)*m)/g;

/** Runs `main` in this process with captured output: for commands that never start a run. */
export async function keenInProcess(argv: string[], env: NodeJS.ProcessEnv = {}) {
  const { main } = await import("../main.js");
  let stdout = "";
  let stderr = "";
  const exitCode = await main(argv, { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s), env, isTTY: false });
  return { exitCode, stdout, stderr };
}
