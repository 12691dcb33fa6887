import { isAbsolute, relative, sep } from "node:path";

/** True when `path` lies below `parent` (the folder itself does not count). Both absolute. */
export function isInside(parent: string, path: string): boolean {
  const rel = relative(parent, path);
  return rel !== "" && rel !== ".." && !rel.startsWith(`..${sep}`) && !isAbsolute(rel);
}
