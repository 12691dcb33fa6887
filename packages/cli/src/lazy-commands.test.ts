import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { keen, listeningUrl, repoRoot } from "./testing/keen-process.js";

const preload = fileURLToPath(new URL("./testing/record-imports.mjs", import.meta.url));

/** Runs keen in a fresh process and returns what it printed and every module URL it resolved. */
async function importsOf(args: string[]): Promise<{ stdout: string; exitCode: number | undefined; urls: string[] }> {
  const log = join(await mkdtemp(join(tmpdir(), "keen-imports-")), "urls.txt");
  // The sources, module by module: what each command imports is read from their paths.
  const result = await keen(args, { KEEN_IMPORT_LOG: log }, { preload, fromSource: true });
  const urls = (await readFile(log, "utf8").catch(() => "")).split("\n").filter(Boolean);
  return { stdout: String(result.stdout), exitCode: result.exitCode, urls };
}

const sdk = (url: string) => url.includes("/@anthropic-ai/sdk/");
const agentCore = (url: string) => url.includes("/packages/agent-core/") || url.includes("/@keen/agent-core/");

describe("what each command loads", () => {
  it("keen --version and keen help load neither the SDK nor agent-core", async () => {
    for (const args of [["--version"], ["help"], []]) {
      const { stdout, exitCode, urls } = await importsOf(args);
      expect(exitCode, args.join(" ")).toBe(0);
      expect(stdout.length).toBeGreaterThan(0);
      expect(urls.some((url) => url.includes("/packages/cli/src/main.ts"))).toBe(true); // the log works
      expect(urls.filter(sdk), args.join(" ")).toEqual([]);
      expect(urls.filter(agentCore), args.join(" ")).toEqual([]);
      expect(urls.filter((url) => url.includes("/commands/run.ts") || url.includes("/commands/demo.ts"))).toEqual([]);
    }
  });

  it("keen run --help and keen help run load neither the SDK nor agent-core", async () => {
    for (const args of [["run", "--help"], ["run", "-h"], ["help", "run"]]) {
      const { stdout, exitCode, urls } = await importsOf(args);
      expect(exitCode, args.join(" ")).toBe(0);
      expect(stdout).toContain('Usage: keen run "<vision>"');
      expect(urls.some((url) => url.includes("/commands/run-options.ts"))).toBe(true); // the log works
      expect(urls.filter(sdk), args.join(" ")).toEqual([]);
      expect(urls.filter(agentCore), args.join(" ")).toEqual([]);
      expect(urls.filter((url) => url.includes("/commands/run.ts"))).toEqual([]);
    }
  });

  it("keen --version and keen run --help do not load the terminal width tables", async () => {
    for (const args of [["--version"], ["run", "--help"]]) {
      const { urls } = await importsOf(args);
      expect(urls.filter((url) => url.includes("/string-width/") || url.includes("/terminal-width.ts")), args.join(" ")).toEqual([]);
    }
  });

  it("keen run loads them when it runs", async () => {
    // A usage error (not a repository) after the run command's module has loaded, and with it agent-core.
    const { exitCode, urls } = await importsOf(["run", "do something", "--repo", tmpdir()]);
    expect(exitCode).toBe(2);
    expect(urls.some(agentCore)).toBe(true);
    expect(urls.some((url) => url.includes("/commands/run.ts"))).toBe(true);
  });

  it("keen serve on PGlite with billing off loads neither stripe, pg-boss nor pg", async () => {
    const dir = await mkdtemp(join(tmpdir(), "keen-imports-serve-"));
    const log = join(dir, "urls.txt");
    const env: Record<string, string> = { PATH: process.env.PATH!, KEEN_IMPORT_LOG: log };
    const child = execa(process.execPath, ["--import", preload, "--import", "tsx", "packages/cli/src/bin.ts", "serve", "--port", "0", "--data-dir", join(dir, "data"), "--log-level", "silent"], {
      cwd: repoRoot,
      reject: false,
      env,
      extendEnv: false,
    });
    const url = await listeningUrl(child);
    expect((await fetch(`${url}/readyz`)).status).toBe(200);
    child.kill("SIGTERM");
    expect((await child).exitCode).toBe(0);
    const urls = (await readFile(log, "utf8")).split("\n").filter(Boolean);
    const loaded = (name: string) => urls.filter((u) => u.includes(`/node_modules/${name}/`));
    expect(loaded("@electric-sql/pglite").length).toBeGreaterThan(0); // the log works, CommonJS included
    expect(urls.some((u) => u.includes("/node_modules/koa/"))).toBe(true);
    expect(loaded("stripe")).toEqual([]);
    expect(loaded("pg-boss")).toEqual([]);
    expect(loaded("pg")).toEqual([]);
  }, 120_000);
});
