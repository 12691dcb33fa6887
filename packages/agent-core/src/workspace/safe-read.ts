import { constants } from "node:fs";
import { open } from "node:fs/promises";
import { KeenError } from "../errors.js";

export interface SafeReadOptions {
  /** Refuse a file larger than this many bytes (code `file_too_large`) before reading any of it. */
  maxBytes: number;
  /** Stops a read in progress (code `aborted`). */
  signal?: AbortSignal;
}

const CHUNK_BYTES = 1024 * 1024;

/**
 * Reads a file keen opens on the host on an agent's behalf. The final path component is opened
 * with `O_NOFOLLOW` (a symlink is refused, never followed) and `O_NONBLOCK` (opening a FIFO does
 * not wait for a writer); the *opened descriptor* must then be a regular file, so a FIFO, socket
 * or device swapped in after any earlier check is still refused. The size is checked on the
 * descriptor before anything is loaded, and the read goes in chunks that honour `signal`.
 *
 * Throws `KeenError` codes `not_regular_file`, `file_too_large`, `aborted`, or the `open` error.
 */
export async function readRegularFile(absolute: string, options: SafeReadOptions): Promise<Buffer> {
  const handle = await open(absolute, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw new KeenError("not_regular_file", `${absolute} is not a regular file (${describeType(info)})`);
    if (info.size > options.maxBytes) {
      throw new KeenError("file_too_large", `${absolute} has ${info.size} bytes, more than the limit of ${options.maxBytes}`);
    }
    // The file may grow while we read; never read past the cap.
    const buffer = Buffer.alloc(Math.min(info.size, options.maxBytes) + 1);
    let filled = 0;
    while (filled < buffer.length) {
      if (options.signal?.aborted) throw new KeenError("aborted", `Reading ${absolute} was aborted`);
      const { bytesRead } = await handle.read(buffer, filled, Math.min(CHUNK_BYTES, buffer.length - filled), null);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    if (filled > options.maxBytes) {
      throw new KeenError("file_too_large", `${absolute} grew past the limit of ${options.maxBytes} bytes while it was read`);
    }
    return buffer.subarray(0, filled);
  } finally {
    await handle.close();
  }
}

function describeType(info: { isDirectory(): boolean; isFIFO(): boolean; isSocket(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean; isSymbolicLink(): boolean }): string {
  if (info.isDirectory()) return "a folder";
  if (info.isFIFO()) return "a FIFO";
  if (info.isSocket()) return "a socket";
  if (info.isCharacterDevice() || info.isBlockDevice()) return "a device";
  if (info.isSymbolicLink()) return "a symbolic link";
  return "not a regular file";
}
