import { createHash, randomBytes, randomUUID } from "node:crypto";
import type { Router } from "@koa/router";
import { createKyselyAuthStores, requestIp, validate, type AuthService, type Principal, type Role } from "@keen/gateway-kit";
import type { Kysely } from "kysely";
import type { ParameterizedContext } from "koa";
import * as z from "zod";
import type { ServerTables } from "../db/tables.js";
import { ServerError } from "../errors.js";
import { lockLiveUser } from "../privacy/live-user.js";
import { isPlainId, teamAccess } from "./access.js";
import { AcceptInviteBody, CreateInviteBody, CreateTeamBody, SetRoleBody } from "./team-input.js";
import { jsonBody } from "../http/json-body.js";
import { requireReauthentication } from "../http/reauth.js";

/** Lower is more powerful. */
const RANK: Record<Role, number> = { owner: 0, admin: 1, member: 2, viewer: 3 };

const hashToken = (token: string) => createHash("sha256").update(token, "utf8").digest("hex");

function principalOf(ctx: ParameterizedContext): Principal {
  const principal = ctx.state.principal;
  if (!principal) throw new ServerError("forbidden", "Authentication required");
  return principal;
}

/** Account-level acts (creating a team, accepting an invite) need a signed-in user, not a team's API key. */
function signedInUser(ctx: ParameterizedContext): Principal {
  const principal = principalOf(ctx);
  if (principal.via !== "jwt") throw new ServerError("forbidden", "This needs a signed-in user, not an API key");
  return principal;
}

const metaOf = (ctx: ParameterizedContext) => ({ ip: requestIp(ctx), userAgent: ctx.get("user-agent") || undefined, requestId: ctx.state.requestId, actorId: ctx.state.principal?.userId });

/**
 * Teams through gateway-kit's team store and service: create, list members, change a role,
 * remove a member, invite by email and accept. Rules: a team the caller is not in is 404; only
 * holders of `team:manage` (owners, admins) change membership; only owners grant or take the
 * owner role or touch an owner; nobody raises their own role; the last owner stays (gateway-kit
 * answers 409 `last_owner`); any member may leave; an invite is accepted only by the account
 * that holds its address AND has verified it (403 `email_unverified` otherwise). Inviting and changing a role hand out access
 * that outlives the caller's session, so they re-authenticate like minting an API key (see
 * http/reauth.ts): a signed-in user with the password, never an API key, whatever its scopes.
 */
export function mountTeamRoutes(router: Router, deps: { db: Kysely<ServerTables>; auth: AuthService }): void {
  const { auth, db } = deps;
  const json = jsonBody({ limit: 8 * 1024 });
  const teams = auth.stores.teams;

  router.get("/teams", async (ctx) => {
    ctx.body = { teams: await auth.memberships(principalOf(ctx)) };
  });

  router.post("/teams", json, validate({ body: CreateTeamBody }), async (ctx) => {
    const principal = signedInUser(ctx);
    const { name } = ctx.state.validated!.body as z.output<typeof CreateTeamBody>;
    const id = randomUUID();
    const at = new Date();
    // The team and its owner land together, and only for a live user (the erasure's row lock).
    await (db as Kysely<any>).transaction().execute(async (trx) => {
      await lockLiveUser(trx, principal.userId);
      const tx = createKyselyAuthStores(trx);
      await tx.teams.create({ id, name, personal: false }, at);
      await tx.teams.addMember(id, principal.userId, "owner", at);
    });
    ctx.status = 201;
    ctx.set("Location", `/v1/teams/${id}`);
    ctx.body = { id, name, personal: false, role: "owner" };
  });

  router.get("/teams/:teamId/members", async (ctx) => {
    const access = await teamAccess(auth, principalOf(ctx), ctx.params.teamId!, "team:read");
    const rows = await (db as Kysely<any>)
      .selectFrom("memberships")
      .innerJoin("users", "users.id", "memberships.user_id")
      .select(["memberships.user_id as userId", "users.email as email", "users.display_name as displayName", "memberships.role as role", "memberships.created_at as joinedAt"])
      .where("memberships.team_id", "=", access.teamId)
      .orderBy("memberships.created_at")
      .orderBy("memberships.user_id")
      .execute();
    ctx.body = { teamId: access.teamId, members: rows };
  });

  router.put("/teams/:teamId/members/:userId", json, validate({ body: SetRoleBody }), async (ctx) => {
    const principal = principalOf(ctx);
    const access = await teamAccess(auth, principal, ctx.params.teamId!, "team:manage");
    const target = ctx.params.userId!;
    if (!isPlainId(target)) throw new ServerError("not_found", "Member not found");
    const { role, password } = ctx.state.validated!.body as z.output<typeof SetRoleBody>;
    const current = await teams.roleOf(target, access.teamId);
    if (!current) throw new ServerError("not_found", "Member not found");
    if (target === principal.userId && RANK[role] < RANK[current]) throw new ServerError("forbidden", "Nobody can raise their own role");
    if (access.role !== "owner" && (role === "owner" || current === "owner")) throw new ServerError("forbidden", "Only an owner grants or changes the owner role");
    await requireReauthentication(auth, ctx, password);
    await auth.setMemberRole(access.teamId, target, role, metaOf(ctx));
    ctx.body = { teamId: access.teamId, userId: target, role };
  });

  router.delete("/teams/:teamId/members/:userId", async (ctx) => {
    const principal = principalOf(ctx);
    const target = ctx.params.userId!;
    if (!isPlainId(target)) throw new ServerError("not_found", "Member not found");
    const leaving = target === principal.userId;
    // Leaving needs only membership; removing someone else needs team:manage.
    const access = await teamAccess(auth, principal, ctx.params.teamId!, leaving ? undefined : "team:manage");
    const current = await teams.roleOf(target, access.teamId);
    if (!current) throw new ServerError("not_found", "Member not found");
    if (!leaving && current === "owner" && access.role !== "owner") throw new ServerError("forbidden", "Only an owner removes an owner");
    await auth.removeMember(access.teamId, target, metaOf(ctx));
    ctx.body = { teamId: access.teamId, userId: target, removed: true };
  });

  router.post("/teams/:teamId/invites", json, validate({ body: CreateInviteBody }), async (ctx) => {
    const principal = principalOf(ctx);
    const access = await teamAccess(auth, principal, ctx.params.teamId!, "team:manage");
    const body = ctx.state.validated!.body as z.output<typeof CreateInviteBody>;
    if (body.role === "owner" && access.role !== "owner") throw new ServerError("forbidden", "Only an owner invites owners");
    await requireReauthentication(auth, ctx, body.password);
    const token = `kti_${randomBytes(32).toString("base64url")}`;
    const id = randomUUID();
    const createdAt = new Date();
    const expiresAt = new Date(createdAt.getTime() + body.expiresInHours * 3_600_000);
    // The invite names its sender: written only while the sender is live.
    await db.transaction().execute(async (trx) => {
      await lockLiveUser(trx, principal.userId);
      await trx
        .insertInto("team_invites")
        .values({ id, team_id: access.teamId, email: body.email, role: body.role, token_hash: hashToken(token), invited_by: principal.userId, created_at: createdAt, expires_at: expiresAt })
        .execute();
    });
    ctx.status = 201;
    // The token is shown once; the inviter passes it on (e.g. in a link). Only its hash is stored.
    ctx.body = { id, teamId: access.teamId, email: body.email, role: body.role, expiresAt: expiresAt.toISOString(), token };
  });

  router.get("/teams/:teamId/invites", async (ctx) => {
    const access = await teamAccess(auth, principalOf(ctx), ctx.params.teamId!, "team:manage");
    const rows = await db
      .selectFrom("team_invites")
      .select(["id", "email", "role", "created_at", "expires_at", "accepted_at", "revoked_at"])
      .where("team_id", "=", access.teamId)
      .orderBy("created_at", "desc")
      .limit(500)
      .execute();
    ctx.body = {
      teamId: access.teamId,
      invites: rows.map((r) => ({
        id: r.id,
        email: r.email,
        role: r.role,
        createdAt: new Date(r.created_at).toISOString(),
        expiresAt: new Date(r.expires_at).toISOString(),
        state: r.revoked_at ? "revoked" : r.accepted_at ? "accepted" : new Date(r.expires_at).getTime() <= Date.now() ? "expired" : "open",
      })),
    };
  });

  router.delete("/teams/:teamId/invites/:inviteId", async (ctx) => {
    const access = await teamAccess(auth, principalOf(ctx), ctx.params.teamId!, "team:manage");
    if (!isPlainId(ctx.params.inviteId)) throw new ServerError("not_found", "Invite not found");
    const result = await db
      .updateTable("team_invites")
      .set({ revoked_at: new Date() })
      .where("id", "=", ctx.params.inviteId!)
      .where("team_id", "=", access.teamId)
      .where("accepted_at", "is", null)
      .where("revoked_at", "is", null)
      .executeTakeFirst();
    if (Number(result.numUpdatedRows) === 0) throw new ServerError("not_found", "Invite not found");
    ctx.body = { id: ctx.params.inviteId, revoked: true };
  });

  router.post("/invites/accept", json, validate({ body: AcceptInviteBody }), async (ctx) => {
    const principal = signedInUser(ctx);
    const { token } = ctx.state.validated!.body as z.output<typeof AcceptInviteBody>;
    const user = await auth.stores.users.findById(principal.userId);
    if (!user) throw new ServerError("not_found", "Invite not found");
    const accepted = await db.transaction().execute(async (trx) => {
      // Joining only as a live user: an erasure that began meanwhile has deleted the user's
      // memberships and would not see this one.
      await lockLiveUser(trx, principal.userId);
      const invite = await trx.selectFrom("team_invites").selectAll().where("token_hash", "=", hashToken(token)).forUpdate().executeTakeFirst();
      // Someone else's invite is as unknown as a made-up token.
      if (!invite || invite.email !== user.email.toLowerCase()) throw new ServerError("not_found", "Invite not found");
      // An invite is for whoever holds the address, and holding it is proved, never claimed:
      // sign-up takes any address, so an unverified account may be squatting the invitee's.
      if (!user.emailVerified) {
        throw new ServerError("email_unverified", "Verify your email address before accepting this invite (POST /v1/auth/email/verification)", { email: user.email });
      }
      if (invite.revoked_at || invite.accepted_at || new Date(invite.expires_at).getTime() <= Date.now()) {
        throw new ServerError("invite_unusable", "This invite was revoked, already used or has expired");
      }
      const member = await (trx as Kysely<any>).selectFrom("memberships").select("role").where("team_id", "=", invite.team_id).where("user_id", "=", principal.userId).executeTakeFirst();
      if (member) throw new ServerError("already_member", "You are already a member of this team");
      // The membership and the used invite land together: an invite is never spent without the join.
      await (trx as Kysely<any>).insertInto("memberships").values({ team_id: invite.team_id, user_id: principal.userId, role: invite.role, created_at: new Date() }).execute();
      await trx.updateTable("team_invites").set({ accepted_at: new Date(), accepted_by: principal.userId }).where("id", "=", invite.id).execute();
      return invite;
    });
    ctx.body = { teamId: accepted.team_id, role: accepted.role };
  });
}
