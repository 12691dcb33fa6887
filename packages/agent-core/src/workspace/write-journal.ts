import { randomBytes } from "node:crypto";
import { chmod, lstat, mkdir, readFile, realpath, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import type { FileState, Workspace } from "./workspace.js";

/**
 * The files at `paths` as they are now: each one's bytes and permission bits, or its absence.
 * Null when one cannot be replayed exactly by `writeFileStates`: not a regular file, reached
 * through a symbolic link, or outside the workspace. Paths are stored relative to the root.
 */
export async function readFileStates(workspace: Pick<Workspace, "root" | "resolvePath">, paths: Iterable<string>): Promise<FileState[] | null> {
  const states: FileState[] = [];
  for (const path of paths) {
    let full: string;
    try {
      full = await workspace.resolvePath(path);
    } catch {
      return null;
    }
    const name = relative(workspace.root, full);
    if (name === "" || !(await reachedDirectly(workspace.root, full))) return null;
    const info = await lstat(full).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT" || error.code === "ENOTDIR") return "absent" as const;
      throw error;
    });
    if (info === "absent") {
      states.push({ path: name });
      continue;
    }
    if (!info.isFile()) return null;
    const bytes = await readFile(full);
    const text = bytes.toString("utf8");
    const mode = info.mode & 0o7777;
    states.push(Buffer.from(text, "utf8").equals(bytes) ? { path: name, mode, text } : { path: name, mode, base64: bytes.toString("base64") });
  }
  return states;
}

/** True when no folder between the root and `full` is a symbolic link (a missing folder counts as direct). */
async function reachedDirectly(root: string, full: string): Promise<boolean> {
  let folder = dirname(full);
  while (folder !== root && folder.startsWith(`${root}/`)) {
    try {
      return (await realpath(folder)) === folder;
    } catch {
      folder = dirname(folder); // Not there (yet): judge the part that is.
    }
  }
  return folder === root;
}

/** The size of a file state's content in bytes (0 for an absent file). */
export function fileStateBytes(state: FileState): number {
  if (state.text !== undefined) return Buffer.byteLength(state.text, "utf8");
  if (state.base64 !== undefined) return Math.floor((state.base64.length * 3) / 4);
  return 0;
}

/** Whether two states of one path hold the same thing. */
export function sameFileState(a: FileState | undefined, b: FileState): boolean {
  if (!a || a.mode !== b.mode) return false;
  if (b.mode === undefined) return true;
  const bytes = (state: FileState) => (state.text !== undefined ? Buffer.from(state.text, "utf8") : Buffer.from(state.base64 ?? "", "base64"));
  return bytes(a).equals(bytes(b));
}

/**
 * Makes each path hold what its state says: the bytes written through a temporary file renamed
 * into place, then the permission bits; an absent file removed (a folder there fails).
 */
export async function writeFileStates(workspace: Pick<Workspace, "resolvePath">, states: readonly FileState[]): Promise<void> {
  for (const state of states) {
    const full = await workspace.resolvePath(state.path);
    if (state.mode === undefined) {
      await rm(full, { force: true });
      continue;
    }
    await mkdir(dirname(full), { recursive: true });
    const temp = join(dirname(full), `.keen-${randomBytes(6).toString("hex")}.tmp`);
    try {
      await writeFile(temp, state.text !== undefined ? Buffer.from(state.text, "utf8") : Buffer.from(state.base64 ?? "", "base64"), { flag: "wx" });
      await chmod(temp, state.mode);
      await rename(temp, full);
    } catch (error) {
      await rm(temp, { force: true });
      throw error;
    }
  }
}
