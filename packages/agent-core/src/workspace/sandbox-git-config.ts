import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rename, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { containsCredential } from "./commit-filter.js";

/**
 * Keys whose values are credentials or lead to them: HTTP headers (CI systems put an
 * `Authorization` header there), credential helpers and their settings, cookie files, and
 * include directives (they name files outside the repository, which the sandbox does not show).
 */
const SECRET_KEY = /^(?:http\.(?:.*\.)?(?:extraheader|cookiefile|proxy|sslkeypasswordprotected|sslcertpasswordprotected)|credential\..*|include\..*|includeif\..*|.*\.(?:password|token|secret|accesstoken|apikey|authorization))$/i;

/** `scheme://user:password@host/...`: the userinfo part of a URL. */
const URL_USERINFO = /^([A-Za-z][A-Za-z0-9+.-]*:\/\/)[^/@\s]*@/;

/**
 * The repository's config as the sandbox shows it: every entry that could hold a credential is
 * dropped, and user names and passwords are cut from URLs (`https://token@host/x` becomes
 * `https://host/x`), so an agent reading `.git/config` or running `git config --list` sees no
 * token. What is left (core settings, remotes, branches) keeps git working inside.
 */
export function sanitizeGitConfig(entries: Array<[string, string]>): string {
  const sections = new Map<string, string[]>();
  for (const [key, rawValue] of entries) {
    if (SECRET_KEY.test(key)) continue;
    const value = rawValue.replace(URL_USERINFO, "$1");
    if (containsCredential(value) || containsCredential(key)) continue;
    const first = key.indexOf(".");
    const last = key.lastIndexOf(".");
    if (first <= 0 || last === key.length - 1) continue;
    const section = key.slice(0, first);
    const name = key.slice(last + 1);
    const subsection = first === last ? undefined : key.slice(first + 1, last);
    if (!/^[A-Za-z0-9.-]+$/.test(section) || !/^[A-Za-z][A-Za-z0-9-]*$/.test(name)) continue;
    // A URL with a user name and password as a subsection (`[url "https://user:pw@host/"]`).
    if (subsection !== undefined && (/[\n\0]/.test(subsection) || URL_USERINFO.test(subsection))) continue;
    const header = subsection === undefined ? `[${section}]` : `[${section} "${subsection.replace(/[\\"]/g, "\\$&")}"]`;
    const lines = sections.get(header) ?? [];
    lines.push(`\t${name} = ${quoteValue(value)}`);
    sections.set(header, lines);
  }
  return [...sections].map(([header, lines]) => `${header}\n${lines.join("\n")}\n`).join("");
}

function quoteValue(value: string): string {
  return `"${value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n").replace(/\t/g, "\\t").replace(/\0/g, "")}"`;
}

/** Parses `git config --list -z` output: `key\nvalue\0` per entry (a key alone when it has no value). */
function parseList(output: string): Array<[string, string]> {
  return output
    .split("\0")
    .filter((entry) => entry !== "")
    .map((entry) => {
      const cut = entry.indexOf("\n");
      return cut === -1 ? [entry, "true"] : [entry.slice(0, cut), entry.slice(cut + 1)];
    });
}

const cache = new Map<string, { version: string; file: string }>();

/** `git config --list -z` of one config file alone, or null when it cannot be read or parsed. */
async function listConfigFile(config: string): Promise<Array<[string, string]> | null> {
  // Loaded here, not at the top: a run without the sandbox never needs execa.
  const { execa } = await import("execa");
  const listed = await execa("git", ["config", "--file", config, "--list", "-z"], {
    reject: false,
    extendEnv: false,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", GIT_CONFIG_NOSYSTEM: "1", GIT_CONFIG_GLOBAL: "/dev/null" },
    stdin: "ignore",
  });
  return listed.exitCode === 0 ? parseList(String(listed.stdout)) : null;
}

/** Writes `text` to `file` through a temp file beside it, so a reader never sees half of it. */
async function writeAtomically(file: string, text: string): Promise<void> {
  const temp = join(dirname(file), `.${basename(file)}-${randomBytes(6).toString("hex")}.tmp`);
  await writeFile(temp, text, { mode: 0o644 });
  await rename(temp, file);
}

let systemCopies: Promise<string> | undefined;

/**
 * The host's system-wide git config (`/etc/gitconfig`, or `source`) as the sandbox shows it:
 * sanitized like the repository's config (credential helpers, `http.extraheader`, user names and
 * passwords in URLs and `url.<base>.insteadOf` keys are gone). The copy is written (again only
 * when the source changed) into a private folder of keen's own temp dir; a source that cannot
 * be read or parsed is shown as an empty file. Returns null when there is no source file.
 */
export async function sandboxSystemGitConfig(source: string): Promise<string | null> {
  const info = await stat(source).catch(() => null);
  if (!info?.isFile()) return null;
  const version = `${info.ino}:${info.size}:${info.mtimeMs}`;
  const known = cache.get(`system:${source}`);
  if (known?.version === version) return known.file;
  systemCopies ??= mkdtemp(join(tmpdir(), "keen-sandbox-config-"));
  const dir = await systemCopies;
  const file = join(dir, `${createHash("sha256").update(source).digest("hex").slice(0, 16)}.gitconfig`);
  const entries = await listConfigFile(source);
  await writeAtomically(file, entries ? sanitizeGitConfig(entries) : "");
  cache.set(`system:${source}`, { version, file });
  return file;
}

/**
 * Writes the sanitized copy of `<commonDir>/config` to `<commonDir>/keen/sandbox-config` (again
 * only when the config changed) and returns its path, for the sandbox to mount over the real
 * one. Returns null when the repository has no config file or it cannot be read.
 */
export async function sandboxGitConfig(commonDir: string): Promise<string | null> {
  const config = join(commonDir, "config");
  const info = await stat(config).catch(() => null);
  if (!info?.isFile()) return null;
  const version = `${info.ino}:${info.size}:${info.mtimeMs}`;
  const known = cache.get(config);
  if (known?.version === version) return known.file;
  const entries = await listConfigFile(config);
  if (!entries) return null;
  const dir = join(commonDir, "keen");
  await mkdir(dir, { recursive: true });
  const file = join(dir, "sandbox-config");
  await writeAtomically(file, sanitizeGitConfig(entries));
  cache.set(config, { version, file });
  return file;
}
