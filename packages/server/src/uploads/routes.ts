import { randomUUID } from "node:crypto";
import { join } from "node:path";
import type { Router } from "@koa/router";
import { measureDirectory, quota, requireScope, screenUploads } from "@keen/gateway-kit";
import type { Kysely } from "kysely";
import type { ServerConfig } from "../config.js";
import type { ServerTables } from "../db/tables.js";
import { ServerError } from "../errors.js";
import { RUN_SCOPES } from "../runs/routes.js";
import { uploadFolder, unpackUpload } from "./unpack.js";

/**
 * `POST /v1/uploads`: a repository as the raw body (.tar, .tar.gz or .zip). Pipeline after the
 * router's authenticate/audit/rate limit: scope → quota (body size, the user's disk) → screen
 * the archive (paths, links, bombs) → unpack only the screened bytes → 201 `{ id, … }`.
 */
export function mountUploadRoutes(router: Router, deps: { db: Kysely<ServerTables>; config: ServerConfig }): void {
  const { db, config } = deps;
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
      const commit = await unpackUpload(body, report, uploadFolder(config.workspacesDir, principal.userId, id));
      const row = await db
        .insertInto("uploads")
        .values({
          id,
          team_id: principal.teamId,
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
