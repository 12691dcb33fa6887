import { randomUUID } from "node:crypto";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import type { Router } from "@koa/router";
import { createKyselyRunSlotStore, enforceQuota, measureDirectory, quota, QuotaExceededError, requireScope, screenUploads, type RunSlotStore } from "@keen/gateway-kit";
import type { Kysely } from "kysely";
import type { ServerConfig } from "../config.js";
import type { ServerTables } from "../db/tables.js";
import { ServerError } from "../errors.js";
import { isAccountErased, lockLiveUser } from "../privacy/live-user.js";
import { RUN_SCOPES } from "../runs/routes.js";
import { uploadFolder, unpackUpload } from "./unpack.js";

/** How long one user's unpacking turn lasts without renewal (a process that died gives it back after this). */
const TURN_LEASE_MS = 10 * 60_000;
/** How long an upload waits for the same user's earlier upload to finish unpacking. */
const TURN_WAIT_MS = 60_000;

/**
 * Takes the user's one unpacking turn: a lease in the database (gateway-kit's slot store, under a
 * key of its own), so uploads of one user are measured and unpacked one at a time across every
 * server process. Waits for an earlier upload to finish; returns the release.
 */
async function unpackingTurn(store: RunSlotStore, userId: string, uploadId: string): Promise<() => Promise<void>> {
  const holds = [{ key: `upload-disk:${userId}`, limit: 1 }];
  const deadline = Date.now() + TURN_WAIT_MS;
  while (!(await store.acquire(uploadId, holds, TURN_LEASE_MS, new Date())).acquired) {
    if (Date.now() > deadline) throw new ServerError("uploads_busy", "Another upload of yours is still being unpacked; try again shortly");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const renew = setInterval(() => void store.renew(uploadId, TURN_LEASE_MS, new Date()).catch(() => {}), TURN_LEASE_MS / 4);
  renew.unref();
  return async () => {
    clearInterval(renew);
    await store.release(uploadId).catch(() => {});
  };
}

/**
 * `POST /v1/uploads`: a repository as the raw body (.tar, .tar.gz or .zip). Pipeline after the
 * router's authenticate/audit/rate limit: scope → quota (body size, the user's disk) → screen
 * the archive (paths, links, bombs) → unpack only the screened bytes → 201 `{ id, … }`.
 */
export function mountUploadRoutes(router: Router, deps: { db: Kysely<ServerTables>; config: ServerConfig }): void {
  const { db, config } = deps;
  const turns = createKyselyRunSlotStore(db);
  router.post(
    "/uploads",
    requireScope(RUN_SCOPES.write),
    quota({
      maxUploadBytes: config.maxUploadBytes,
      limits: { workspaceBytes: config.maxWorkspaceBytes },
      usage: async (ctx) => {
        const userId = ctx.state.principal!.userId;
        const used = await measureDirectory(join(config.workspacesDir, userId)).catch(() => ({ bytes: 0 }));
        return { workspaceBytes: used.bytes + Number(ctx.get("content-length") || 0) };
      },
    }),
    screenUploads({ maxCompressedBytes: config.maxUploadBytes, maxUncompressedBytes: Math.min(config.maxWorkspaceBytes, 1024 * 1024 * 1024) }),
    async (ctx) => {
      const principal = ctx.state.principal!;
      if (!principal.teamId) throw new ServerError("forbidden", "Choose a team before uploading");
      const { body, report } = ctx.state.screenedUpload!;
      const id = `upl_${randomUUID()}`;
      // The quota at the door saw the bytes as sent; what lands on disk is the unpacked tree and
      // its repository. So, one upload per user at a time: the unpacked size is checked against
      // what the user's folder holds now, and the folder measured again once unpacked.
      const userRoot = join(config.workspacesDir, principal.userId);
      const usedBytes = async () => (await measureDirectory(userRoot).catch(() => ({ bytes: 0 }))).bytes;
      const release = await unpackingTurn(turns, principal.userId, id);
      let row;
      try {
        enforceQuota("workspaceBytes", (await usedBytes()) + report.uncompressedBytes, config.maxWorkspaceBytes);
        const folder = uploadFolder(config.workspacesDir, principal.userId, id);
        const commit = await unpackUpload(body, report, folder);
        try {
          const after = await usedBytes();
          if (after > config.maxWorkspaceBytes) throw new QuotaExceededError("workspaceBytes", config.maxWorkspaceBytes, after);
          const teamId = principal.teamId;
          // Recorded only for a live user, under the user's row lock the erasure takes.
          row = await db.transaction().execute(async (trx) => {
            await lockLiveUser(trx, principal.userId);
            return trx
              .insertInto("uploads")
              .values({
                id,
                team_id: teamId,
                user_id: principal.userId,
                format: report.format,
                compressed_bytes: report.compressedBytes,
                uncompressed_bytes: report.uncompressedBytes,
                files: report.files,
                commit,
                created_at: new Date(),
              })
              .returningAll()
              .executeTakeFirstOrThrow();
          });
        } catch (error) {
          // The account was erased while this unpacked: the erasure may have removed the user's
          // folder before the unpacking made it again, so all of it goes, not only this upload.
          await rm(isAccountErased(error) ? userRoot : folder, { recursive: true, force: true });
          throw error;
        }
      } finally {
        await release();
      }
      ctx.status = 201;
      ctx.body = { id: row.id, format: row.format, files: row.files, bytes: Number(row.uncompressed_bytes), commit: row.commit, createdAt: new Date(row.created_at).toISOString() };
    },
  );
}

/** The upload a run may start from: the caller's team's, or not found. */
export async function findUpload(db: Kysely<ServerTables>, teamId: string, uploadId: string) {
  if (!/^upl_[0-9a-f-]{36}$/.test(uploadId)) throw new ServerError("not_found", "Upload not found");
  const row = await db.selectFrom("uploads").selectAll().where("id", "=", uploadId).where("team_id", "=", teamId).executeTakeFirst();
  if (!row) throw new ServerError("not_found", "Upload not found");
  return row;
}
