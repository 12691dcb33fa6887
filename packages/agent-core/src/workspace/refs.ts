import { lstat, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { constants, inflateSync } from "node:zlib";

/**
 * Whether `git check-ref-format --branch` would accept `branch` as a new branch name, decided
 * without a subprocess. Stricter where git would expand a name (`@{-1}`), never looser: every
 * rule of git-check-ref-format(1), plus no leading `-` and not `HEAD`.
 */
export function isValidBranchName(branch: string): boolean {
  if (typeof branch !== "string" || branch === "" || branch === "@" || branch === "HEAD") return false;
  if (branch.startsWith("-") || branch.startsWith("/") || branch.endsWith("/") || branch.endsWith(".")) return false;
  if (branch.includes("..") || branch.includes("//") || branch.includes("@{")) return false;
  // Control characters, space, ~ ^ : ? * [ and backslash.
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u0020\u007f~^:?*[\\]/.test(branch)) return false;
  return branch.split("/").every((part) => part !== "" && !part.startsWith(".") && !part.endsWith(".lock"));
}

/** Whether `refs/heads/<branch>` exists, and an existing ref it would clash with as file/folder. */
export interface RefsAround {
  exists: boolean;
  clash: string | null;
}

/**
 * `refsAround` answered from the common dir's files: loose refs under `refs/heads` and
 * `packed-refs`. Returns undefined when the files cannot answer (a reftable repository, an
 * unreadable entry), and the caller asks git. `branch` must be a valid branch name.
 */
export async function refsAroundFromFiles(commonDir: string, branch: string): Promise<RefsAround | undefined> {
  if ((await lstat(join(commonDir, "reftable")).catch(() => null)) !== null) return undefined;
  const own = `refs/heads/${branch}`;
  const parts = branch.split("/");
  const prefixes = parts.slice(1).map((_, i) => `refs/heads/${parts.slice(0, i + 1).join("/")}`);
  try {
    const packed = await packedRefs(commonDir);
    const looseOwn = await lstat(join(commonDir, own)).catch(nullWhenMissing);
    const exists = packed.has(own) || (looseOwn?.isFile() ?? false);
    const below = [...packed].filter((ref) => ref.startsWith(`${own}/`));
    if (looseOwn?.isDirectory()) below.push(...(await looseRefsBelow(commonDir, own)));
    below.sort();
    if (below[0]) return { exists, clash: below[0] };
    for (const prefix of prefixes) {
      const loose = await lstat(join(commonDir, prefix)).catch(nullWhenMissing);
      if (packed.has(prefix) || loose?.isFile()) return { exists, clash: prefix };
    }
    return { exists, clash: null };
  } catch {
    return undefined;
  }
}

/** A `packed-refs` larger than this is left to git (which binary-searches it) rather than read here. */
const PACKED_REFS_READ_MAX = 1024 * 1024;

/**
 * Whether the ref `ref` (a full name such as `refs/keen/checkpoints/x`) exists, answered from the
 * common dir's files: its loose file, then `packed-refs`. The loose file is looked at first: git
 * packs a ref by writing `packed-refs` before it deletes the loose file, so a ref being packed is
 * seen in one or the other. Returns undefined when the files cannot answer plainly (a reftable
 * repository, a folder or other non-file where the loose ref would be, an unreadable or large
 * `packed-refs`), and the caller asks git.
 */
export async function refExistsInFiles(commonDir: string, ref: string): Promise<boolean | undefined> {
  if ((await lstat(join(commonDir, "reftable")).catch(() => null)) !== null) return undefined;
  try {
    const loose = await lstat(join(commonDir, ref)).catch(nullWhenMissing);
    if (loose) return loose.isFile() ? true : undefined;
    const packed = await lstat(join(commonDir, "packed-refs")).catch(nullWhenMissing);
    if (!packed) return false;
    if (!packed.isFile() || packed.size > PACKED_REFS_READ_MAX) return undefined;
    return (await packedRefs(commonDir)).has(ref);
  } catch {
    return undefined;
  }
}

function nullWhenMissing(error: NodeJS.ErrnoException): null {
  if (error.code === "ENOENT" || error.code === "ENOTDIR") return null;
  throw error;
}

/** Names in `packed-refs` (empty when there is none). */
async function packedRefs(commonDir: string): Promise<Set<string>> {
  let text: string;
  try {
    text = await readFile(join(commonDir, "packed-refs"), "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return new Set();
    throw error;
  }
  const refs = new Set<string>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#") || line.startsWith("^")) continue;
    const space = line.indexOf(" ");
    if (space > 0) refs.add(line.slice(space + 1).trimEnd());
  }
  return refs;
}

/** Loose refs below the folder `ref` (files, without git's `.lock` files), as full names. */
async function looseRefsBelow(commonDir: string, ref: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir(join(commonDir, ref), { withFileTypes: true })) {
    const name = `${ref}/${entry.name}`;
    if (entry.isDirectory()) found.push(...(await looseRefsBelow(commonDir, name)));
    else if (entry.isFile() && !entry.name.endsWith(".lock")) found.push(name);
  }
  return found;
}

/** A full object id: SHA-1 or SHA-256, lower-case hex. */
export const OBJECT_ID = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;

/**
 * True when `sha` is a loose commit object of the repository at `commonDir` (its file read and
 * its header inflated: `commit <size>\0`). False means only that the files did not say so (the
 * object may be packed or elsewhere); the caller then asks git.
 */
export async function isLooseCommit(commonDir: string, sha: string): Promise<boolean> {
  if (!OBJECT_ID.test(sha)) return false;
  try {
    const bytes = await readFile(join(commonDir, "objects", sha.slice(0, 2), sha.slice(2)));
    const header = inflateSync(bytes, { finishFlush: constants.Z_SYNC_FLUSH }).subarray(0, 32).toString("latin1");
    return /^commit \d+\0/.test(header);
  } catch {
    return false;
  }
}
