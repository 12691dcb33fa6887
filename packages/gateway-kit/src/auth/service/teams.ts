import { randomUUID } from "node:crypto";
import { AuthError } from "../../errors.js";
import type { Principal } from "../../principal.js";
import type { AuthContext } from "./context.js";
import { permissionsForRole, Role } from "../permissions.js";
import { LastOwnerError } from "../stores.js";
import type { MembershipView, RequestMeta } from "./types.js";

/** Team membership: roles, removal (a team always keeps an owner) and the user's teams. */
export interface TeamService {
  setMemberRole(teamId: string, userId: string, role: Role, meta?: RequestMeta & { actorId?: string }): Promise<void>;
  removeMember(teamId: string, userId: string, meta?: RequestMeta & { actorId?: string }): Promise<void>;
  memberships(principal: Principal): Promise<MembershipView[]>;
}


export function createTeamService(context: AuthContext): TeamService {
  const { stores, now, keyCache, audit, notFound } = context;

  return {
    /**
     * Changes a member's role. The team always keeps an owner: demoting the last one is refused
     * with 409 `last_owner`.
     */
    async setMemberRole(teamId: string, userId: string, role: Role, meta: RequestMeta & { actorId?: string } = {}) {
      const parsedRole = Role.safeParse(role);
      if (!parsedRole.success) throw new AuthError("invalid_request", "Unknown role");
      try {
        if (!(await stores.teams.setRole(teamId, userId, parsedRole.data))) throw notFound("Member");
      } catch (error) {
        if (error instanceof LastOwnerError) throw new AuthError("last_owner", "A team must keep at least one owner");
        throw error;
      }
      keyCache.evict((cached) => cached.key.userId === userId && cached.key.teamId === teamId);
      await audit(meta, { tenantId: teamId, actorId: meta.actorId ?? null, action: "team.role_change", target: `user:${userId}`, result: "success", details: { role: parsedRole.data } });
    },

    /**
     * Removes a member from a team and revokes their API keys there (a later re-invite does not
     * bring them back). The last owner cannot be removed: 409 `last_owner`.
     */
    async removeMember(teamId: string, userId: string, meta: RequestMeta & { actorId?: string } = {}) {
      try {
        if (!(await stores.teams.removeMember(teamId, userId, now()))) throw notFound("Member");
      } catch (error) {
        if (error instanceof LastOwnerError) throw new AuthError("last_owner", "A team must keep at least one owner");
        throw error;
      }
      keyCache.evict((cached) => cached.key.userId === userId && cached.key.teamId === teamId);
      await audit(meta, { tenantId: teamId, actorId: meta.actorId ?? null, action: "team.member_remove", target: `user:${userId}`, result: "success" });
    },

    /** The teams the principal's user belongs to, with roles and permissions. */
    async memberships(principal: Principal) {
      const rows = await stores.teams.memberships(principal.userId);
      return rows.map((m) => ({ teamId: m.teamId, name: m.teamName, personal: m.personal, role: m.role, permissions: permissionsForRole(m.role) }));
    },
  };
}
