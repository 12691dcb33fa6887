import { readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { Worker } from "node:worker_threads";

/** Up to this many entries, a folder is deleted on the main thread; a larger one in a worker thread. */
const MAIN_THREAD_ENTRIES = 128;

/**
 * The worker's code: deletes the folders it is sent, one at a time. The folder itself is looked
 * at with lstat (a link there is unlinked); below it, each entry's type comes from the directory
 * listing itself (lstat where the file system does not say), so only real folders are entered
 * and every link, to a folder or not, is unlinked. Something already gone is no error.
 */
const WORKER_CODE = `
const { parentPort } = require("node:worker_threads");
const { lstatSync, readdirSync, rmdirSync, unlinkSync } = require("node:fs");
const gone = (error) => { if (error.code !== "ENOENT") throw error; };
function removeTree(path) {
  let entries;
  try {
    entries = readdirSync(path, { withFileTypes: true });
  } catch (error) {
    return gone(error);
  }
  for (const entry of entries) {
    const child = path + "/" + entry.name;
    if (entry.isDirectory()) removeTree(child);
    else try { unlinkSync(child); } catch (error) { gone(error); }
  }
  try { rmdirSync(path); } catch (error) { gone(error); }
}
parentPort.on("message", ({ id, path }) => {
  try {
    let info;
    try { info = lstatSync(path); } catch (error) { gone(error); }
    if (info && info.isDirectory()) removeTree(path);
    else if (info) unlinkSync(path);
    parentPort.postMessage({ id });
  } catch (error) {
    parentPort.postMessage({ id, error: String((error && error.message) || error) });
  }
});
`;

let worker: Worker | undefined;
let nextId = 0;
const pending = new Map<number, { resolve: () => void; reject: (error: Error) => void }>();

/**
 * Deletes the folder at `path` and everything in it, never following a symbolic link. A small
 * folder goes in this thread; one of more than 128 entries (a fork's checkout) in a worker
 * thread kept for later calls, where thousands of unlinks cost the main thread next to nothing
 * (a git or `rm` process costs its spawn, `fs.rm` here a callback per file).
 */
export async function removeFolder(path: string): Promise<void> {
  if (await isSmall(path)) return rm(path, { recursive: true, force: true });
  const thread = deletionWorker();
  if (!thread) return rm(path, { recursive: true, force: true });
  return new Promise<void>((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject });
    thread.ref();
    thread.postMessage({ id, path });
  });
}

/** True when `path` holds at most MAIN_THREAD_ENTRIES entries, counted without following links. */
async function isSmall(path: string): Promise<boolean> {
  let count = 0;
  const folders = [path];
  while (folders.length > 0) {
    const folder = folders.pop()!;
    const entries = await readdir(folder, { withFileTypes: true }).catch(() => []);
    count += entries.length;
    if (count > MAIN_THREAD_ENTRIES) return false;
    for (const entry of entries) if (entry.isDirectory()) folders.push(join(folder, entry.name));
  }
  return true;
}

function deletionWorker(): Worker | undefined {
  if (worker) return worker;
  let thread: Worker;
  try {
    // No loaders or flags of the parent: the code above needs none.
    thread = new Worker(WORKER_CODE, { eval: true, execArgv: [] });
  } catch {
    return undefined;
  }
  const failAll = (error: Error) => {
    if (worker === thread) worker = undefined;
    for (const waiting of pending.values()) waiting.reject(error);
    pending.clear();
  };
  thread.on("message", ({ id, error }: { id: number; error?: string }) => {
    const waiting = pending.get(id);
    pending.delete(id);
    // Idle, it does not keep the process alive.
    if (pending.size === 0) thread.unref();
    if (error === undefined) waiting?.resolve();
    else waiting?.reject(new Error(error));
  });
  thread.on("error", failAll);
  thread.on("exit", () => failAll(new Error("the folder deletion thread exited")));
  thread.unref();
  worker = thread;
  return thread;
}
