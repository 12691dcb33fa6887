import type { DataRightsContributor } from "@keen/gateway-kit";
import type { Kysely } from "kysely";
import { ServerError } from "../errors.js";

/**
 * The server's own tables in a user's data rights.
 *
 * Export: the user's runs (vision, repository, options, status, usage, what was charged; not
 * their event logs, which the run's page and stream serve), uploads, preferences, and the team
 * invites they sent or that were addressed to them (never token hashes).
 *
 * Erasure is refused (409 `run_not_finished`) while one of the user's runs is queued or running.
 * Otherwise the user's runs are deleted with their agents and events (what they cost stays in
 * the credits ledger, which keeps its totals), so are their uploads, preferences and the invites
 * addressed to them; invites they sent stay with their team but no longer name them. Files under
 * `<workspaces>/<user>/` are removed by the route after the transaction commits.
 */
export const serverDataRights: DataRightsContributor = {
  name: "server",
  async export(db: Kysely<any>, userId: string) {
    const user = await db.selectFrom("users").select("email").where("id", "=", userId).executeTakeFirst();
    const [runs, uploads, preferences, invitesSent, invitesReceived] = await Promise.all([
      db
        .selectFrom("runs")
        .select(["id", "team_id as teamId", "vision", "repo", "options", "model", "status", "usage", "charged", "summary", "branch", "created_at as createdAt", "finished_at as finishedAt"])
        .where("user_id", "=", userId)
        .orderBy("created_at")
        .execute(),
      db.selectFrom("uploads").select(["id", "team_id as teamId", "format", "compressed_bytes as compressedBytes", "files", "created_at as createdAt"]).where("user_id", "=", userId).orderBy("created_at").execute(),
      db.selectFrom("user_preferences").select(["keep_workspaces as keepWorkspaces"]).where("user_id", "=", userId).executeTakeFirst(),
      db.selectFrom("team_invites").select(["id", "team_id as teamId", "email", "role", "created_at as createdAt", "accepted_at as acceptedAt", "revoked_at as revokedAt"]).where("invited_by", "=", userId).execute(),
      user
        ? db.selectFrom("team_invites").select(["id", "team_id as teamId", "role", "created_at as createdAt", "accepted_at as acceptedAt", "revoked_at as revokedAt"]).where("email", "=", user.email.toLowerCase()).execute()
        : Promise.resolve([]),
    ]);
    return { runs, uploads, preferences: preferences ?? null, invitesSent, invitesReceived };
  },
  async erase(db: Kysely<any>, userId: string) {
    // A run still going would write into rows and folders being removed, and hold credits and a
    // slot no one settles: refuse, and the whole erasure rolls back.
    const active = await db.selectFrom("runs").select("id").where("user_id", "=", userId).where("status", "in", ["queued", "running"]).limit(1).forUpdate().executeTakeFirst();
    if (active) throw new ServerError("run_not_finished", `Run ${active.id} is still going: cancel it first`, { runId: active.id });
    const user = await db.selectFrom("users").select("email").where("id", "=", userId).executeTakeFirst();
    // Agents and events go with their runs (on delete cascade).
    await db.deleteFrom("runs").where("user_id", "=", userId).execute();
    await db.deleteFrom("uploads").where("user_id", "=", userId).execute();
    await db.deleteFrom("user_preferences").where("user_id", "=", userId).execute();
    if (user) await db.deleteFrom("team_invites").where("email", "=", user.email.toLowerCase()).execute();
    await db.updateTable("team_invites").set({ invited_by: null }).where("invited_by", "=", userId).execute();
    await db.updateTable("team_invites").set({ accepted_by: null }).where("accepted_by", "=", userId).execute();
  },
};
