/**
 * Code points HFS+ (macOS) drops when it compares names, so `.g\u200cit` opens `.git` there: the
 * same list git checks (`is_hfs_dotgit`).
 */
// eslint-disable-next-line no-misleading-character-class
const HFS_IGNORED = /[\u200c-\u200f\u202a-\u202e\u206a-\u206f\ufeff]/g;

/**
 * True when a single path component names a git folder to some file system git runs on, as
 * git's own `core.protectHFS` and `core.protectNTFS` checks see it: `.git` in any case (macOS and
 * Windows compare names case-insensitively), with code points HFS+ ignores, with the trailing
 * dots and spaces or `:stream` suffix NTFS drops, or as its 8.3 short name `git~1`.
 *
 * @example
 * isGitDirName(".GIT");       // true
 * isGitDirName(".g\u200cit"); // true
 * isGitDirName(".github");    // false
 */
export function isGitDirName(name: string): boolean {
  let folded = name.replace(HFS_IGNORED, "").toLowerCase();
  const stream = folded.indexOf(":");
  if (stream !== -1) folded = folded.slice(0, stream);
  folded = folded.replace(/[. ]+$/, "");
  return folded === ".git" || folded === "git~1";
}

/** True when any `/`- or `sep`-separated component of `path` is a git folder name (see {@link isGitDirName}). */
export function hasGitDirComponent(path: string): boolean {
  return path.split(/[\\/]/).some((part) => part !== "" && isGitDirName(part));
}
