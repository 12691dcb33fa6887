import { AuthError, type DataRightsContributor } from "@keen/gateway-kit";
import { sql, type Kysely } from "kysely";
import { ServerError } from "../errors.js";
import { lockUserForErasure } from "./live-user.js";

/**
 * The server's own tables in a user's data rights.
 *
 * Export: the user's runs (vision, repository, options, status, usage, what was charged; not
 * their event logs, which the run's page and stream serve), uploads, preferences, the team
 * invites they sent or that were addressed to them (never token hashes; those addressed to
 * them only once their address is verified), and the webhook endpoints they registered (never
 * their secrets).
 *
 * Erasure first takes the user's row `FOR UPDATE` (every path that creates something for the
 * user takes it `FOR SHARE` in its writing transaction, see `lockLiveUser`), so nothing is
 * created for the user while or after it runs. It is refused (409 `run_not_finished`) while one
 * of the user's runs is queued or running, and (409 `last_owner`) while the user is the only
 * owner of a team others belong to, both decided under locks in the erasure's transaction.
 * Otherwise the user's runs are deleted with their agents and events (what they cost stays in
 * the credits ledger, which keeps its totals), so are their uploads, preferences, the invites
 * addressed to them (if their address is verified), the webhook endpoints they registered (with their messages and delivery
 * log) and every webhook message about one of their runs, delivered or pending, on any of the
 * team's endpoints (the message bodies name the user); invites they sent stay with their team but
 * no longer name them. Invites addressed to an address the account never proved are not the
 * account's: they belong to whoever holds the address, and outlive a squatter's erasure. Files under `<workspaces>/<user>/` are removed by the route after the
 * transaction commits.
 */
/**
 * Why the user may not be erased now, or `undefined`: the only owner of a team others belong to
 * (409 `last_owner`), or a run of theirs queued or running (409 `run_not_finished`). With
 * `locked`, decided under the team's and the runs' row locks, inside the erasure's transaction;
 * without, as the check a route makes before it asks for the password.
 */
export async function erasureRefusal(db: Kysely<any>, userId: string, options: { locked: boolean }): Promise<Error | undefined> {
  const owned = await db.selectFrom("memberships").select("team_id").where("user_id", "=", userId).where("role", "=", "owner").orderBy("team_id").execute();
  for (const { team_id: teamId } of owned) {
    if (options.locked) await db.selectFrom("teams").select("id").where("id", "=", teamId).forUpdate().executeTakeFirst();
    const others = await db.selectFrom("memberships").select("role").where("team_id", "=", teamId).where("user_id", "!=", userId).execute();
    if (others.length > 0 && !others.some((m) => m.role === "owner")) {
      return new AuthError("last_owner", `You are the only owner of team ${teamId}: make another member an owner first`);
    }
  }
  const running = db.selectFrom("runs").select("id").where("user_id", "=", userId).where("status", "in", ["queued", "running"]).limit(1);
  const active = await (options.locked ? running.forUpdate() : running).executeTakeFirst();
  if (active) return new ServerError("run_not_finished", `Run ${active.id} is still going: cancel it first`, { runId: active.id });
  return undefined;
}

export const serverDataRights: DataRightsContributor = {
  name: "server",
  async export(db: Kysely<any>, userId: string) {
    const user = await db.selectFrom("users").select(["email", "email_verified"]).where("id", "=", userId).executeTakeFirst();
    const [runs, uploads, preferences, invitesSent, invitesReceived, webhooks] = await Promise.all([
      db
        .selectFrom("runs")
        .select(["id", "team_id as teamId", "vision", "repo", "options", "model", "status", "usage", "charged", "summary", "branch", "created_at as createdAt", "finished_at as finishedAt"])
        .where("user_id", "=", userId)
        .orderBy("created_at")
        .execute(),
      db.selectFrom("uploads").select(["id", "team_id as teamId", "format", "compressed_bytes as compressedBytes", "files", "created_at as createdAt"]).where("user_id", "=", userId).orderBy("created_at").execute(),
      db.selectFrom("user_preferences").select(["keep_workspaces as keepWorkspaces"]).where("user_id", "=", userId).executeTakeFirst(),
      db.selectFrom("team_invites").select(["id", "team_id as teamId", "email", "role", "created_at as createdAt", "accepted_at as acceptedAt", "revoked_at as revokedAt"]).where("invited_by", "=", userId).execute(),
      // Only a proved address: anyone may sign up with any address, and would read who invited it where.
      user?.email_verified === true
        ? db.selectFrom("team_invites").select(["id", "team_id as teamId", "role", "created_at as createdAt", "accepted_at as acceptedAt", "revoked_at as revokedAt"]).where("email", "=", user.email.toLowerCase()).execute()
        : Promise.resolve([]),
      // Endpoints the user registered (never their signing secrets).
      db.selectFrom("webhooks").select(["id", "team_id as teamId", "url", "events", "created_at as createdAt"]).where("user_id", "=", userId).orderBy("created_at").execute(),
    ]);
    return { runs, uploads, preferences: preferences ?? null, invitesSent, invitesReceived, webhooks };
  },
  async erase(db: Kysely<any>, userId: string) {
    // First, before reading anything: a create that already holds the row FOR SHARE commits
    // before this goes on (and is then seen below), one that comes later waits and is refused.
    if (!(await lockUserForErasure(db, userId))) return;
    // Refusals decided under locks: the team's row (the one gateway-kit's role changes and
    // removals take), so two owners erasing at once, or one erasing while the other is demoted,
    // cannot leave a team without an owner; and the runs' rows, as a run still going would write
    // into rows and folders being removed and hold credits and a slot no one settles.
    const refusal = await erasureRefusal(db, userId, { locked: true });
    if (refusal) throw refusal;
    const user = await db.selectFrom("users").select(["email", "email_verified"]).where("id", "=", userId).executeTakeFirst();
    // Webhook messages about the user's runs (their bodies carry the run's user, vision summary
    // and usage), on every endpoint of the team: pending ones are never sent, sent ones forgotten.
    await db
      .deleteFrom("webhook_messages")
      .where(({ exists, selectFrom }) => exists(selectFrom("runs").select("runs.id").where("runs.user_id", "=", userId).where(sql<boolean>`webhook_messages.subject like 'run:' || runs.id || ':%'`)))
      .execute();
    // The endpoints the user registered, with their messages and delivery log (on delete cascade).
    await db.deleteFrom("webhooks").where("user_id", "=", userId).execute();
    // Agents and events go with their runs (on delete cascade).
    await db.deleteFrom("runs").where("user_id", "=", userId).execute();
    await db.deleteFrom("uploads").where("user_id", "=", userId).execute();
    await db.deleteFrom("user_preferences").where("user_id", "=", userId).execute();
    // Only a proved address: a squatter erasing itself must not take the address owner's invites along.
    if (user?.email_verified === true) await db.deleteFrom("team_invites").where("email", "=", user.email.toLowerCase()).execute();
    await db.updateTable("team_invites").set({ invited_by: null }).where("invited_by", "=", userId).execute();
    await db.updateTable("team_invites").set({ accepted_by: null }).where("accepted_by", "=", userId).execute();
  },
};
