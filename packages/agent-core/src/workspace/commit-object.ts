import { createHash, randomBytes } from "node:crypto";
import { link, mkdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { deflateSync } from "node:zlib";
import { KeenError } from "../errors.js";
import { gitRaw, type GitTarget } from "./git.js";

/** Writes commit objects; each call answers the new commit's id. */
export type CommitWriter = (tree: string, parents: readonly string[], message: string) => Promise<string>;

/**
 * The settings under which `git commit-tree` writes something other than a plain commit object
 * into a loose object file of the usual mode, left unsynced: another encoding (an `encoding`
 * header), shared permissions, a second object format to map to, objects synced to disk. (It
 * signs only with `-S`, whatever `commit.gpgSign` says.)
 */
const COMMIT_TREE_OWN = new Set(["i18n.commitencoding", "core.sharedrepository", "extensions.compatobjectformat", "core.fsync", "core.fsyncobjectfiles"]);

/**
 * A writer of merge commits without a git process each: the bytes `git commit-tree` would write
 * for the same tree, parents and message, with the author and committer lines git itself gives
 * for `env` (`git var`, read once here: same name, email and time for every commit written).
 * Undefined where git would write something else (see `COMMIT_TREE_OWN`) or the identity cannot
 * be read: the caller then runs `git commit-tree`.
 *
 * Each object goes where git puts a loose one (`objects/<2>/<rest>`, read-only, compressed): a
 * new file under a temporary name, then linked to its final name, so a reader never sees a part of
 * it and an object already there is kept as it is.
 */
export async function commitWriter(target: GitTarget, commonDir: string, env: Record<string, string>, idLength: number): Promise<CommitWriter | undefined> {
  const hash = idLength === 40 ? "sha1" : idLength === 64 ? "sha256" : undefined;
  if (!hash) return undefined;
  // The identities as commit-tree takes them (`git var NAME` is as strict: no guessed name or
  // email); `var -l` for the configuration, whose own identities are guesses where git has none.
  const [listed, authorIdent, committerIdent] = await Promise.all([
    gitRaw(target, ["var", "-l"], { env }),
    gitRaw(target, ["var", "GIT_AUTHOR_IDENT"], { env }),
    gitRaw(target, ["var", "GIT_COMMITTER_IDENT"], { env }),
  ]);
  if (listed.exitCode !== 0 || authorIdent.exitCode !== 0 || committerIdent.exitCode !== 0) return undefined;
  for (const line of String(listed.stdout).split("\n")) {
    const equals = line.indexOf("=");
    if (equals !== -1 && COMMIT_TREE_OWN.has(line.slice(0, equals).toLowerCase())) return undefined;
  }
  const author = String(authorIdent.stdout).replace(/\n$/, "");
  const committer = String(committerIdent.stdout).replace(/\n$/, "");
  const whole = (line: string) => {
    const parts = /^([^<>\n]+) <([^<>\n]+)> \d+ [+-]\d{4}$/.exec(line);
    return parts !== null && parts[1]!.trim() !== "" && !/\s/.test(parts[2]!);
  };
  if (!whole(author) || !whole(committer)) return undefined;
  const objects = join(commonDir, "objects");
  const id = new RegExp(`^[0-9a-f]{${idLength}}$`);
  return async (tree, parents, message) => {
    // What commit-tree refuses, or could not have been given: refused here too.
    if (![tree, ...parents].every((object) => id.test(object))) throw new KeenError("git_failed", "A commit names an object id of the wrong form");
    if (message.includes("\0")) throw new KeenError("git_failed", "A commit message cannot hold a NUL byte");
    const body = Buffer.from(`tree ${tree}\n${parents.map((parent) => `parent ${parent}\n`).join("")}author ${author}\ncommitter ${committer}\n\n${message}`, "utf8");
    const object = Buffer.concat([Buffer.from(`commit ${body.length}\0`, "latin1"), body]);
    const sha = createHash(hash).update(object).digest("hex");
    const dir = join(objects, sha.slice(0, 2));
    await mkdir(dir, { recursive: true });
    const temporary = join(dir, `tmp_obj_${randomBytes(6).toString("hex")}`);
    await writeFile(temporary, deflateSync(object), { flag: "wx", mode: 0o444 });
    try {
      const final = join(dir, sha.slice(2));
      await link(temporary, final).catch(async (error: NodeJS.ErrnoException) => {
        // Already there: the same bytes, kept. A file system without hard links: moved instead, as git does.
        if (error.code !== "EEXIST") await rename(temporary, final);
      });
    } finally {
      await rm(temporary, { force: true });
    }
    return sha;
  };
}
