import { permissionsForRole, type AuthService, type Permission, type Principal, type Role } from "@keen/gateway-kit";
import { ServerError } from "../errors.js";
import { assertNotErased } from "../privacy/live-user.js";

/**
 * Whether an id from a path or query can name anything: ids here are UUIDs and similar tokens,
 * so anything else (NUL bytes, which PostgreSQL refuses, long or odd strings) names nothing.
 */
export function isPlainId(value: unknown): value is string {
  return typeof value === "string" && /^[A-Za-z0-9._:-]{1,200}$/.test(value);
}

/** What `teamAccess` found: the caller's role in the team and what they may do there. */
export interface TeamAccess {
  teamId: string;
  role: Role;
  permissions: Set<string>;
}

/**
 * The caller's standing in a team named by a request (a path or query id). A team the caller
 * does not belong to is 404, never 403, so other tenants' teams are not revealed to exist; an
 * API key acts only in the team it was made for. Inside their own team a caller without the
 * permission gets 403 `forbidden`. A caller whose account was erased while its request was on
 * the way gets 410 `account_erased`.
 *
 * @example
 * const { role } = await teamAccess(auth, ctx.state.principal!, ctx.params.teamId!, "team:manage");
 */
export async function teamAccess(auth: AuthService, principal: Principal, teamId: string, permission?: Permission): Promise<TeamAccess> {
  const notFound = new ServerError("not_found", "Team not found");
  if (!isPlainId(teamId)) throw notFound;
  if (principal.via === "api_key" && principal.teamId !== teamId) throw notFound;
  const role = await auth.stores.teams.roleOf(principal.userId, teamId);
  if (!role) {
    // A caller erased after it was authenticated lost its memberships with its account: the
    // answer is the erasure's 410, as from every route that writes for it, not "no such team".
    assertNotErased(principal.userId, await auth.stores.users.findById(principal.userId));
    throw notFound;
  }
  // An API key carries its scopes narrowed to its owner's role; a signed-in user has the role's permissions.
  const permissions = new Set<string>(principal.via === "api_key" ? principal.scopes : permissionsForRole(role));
  if (permission && !permissions.has(permission)) throw new ServerError("forbidden", `Missing permission ${permission} in this team`, { missing: permission });
  return { teamId, role, permissions };
}

/** The team a request means: the one it names, or the caller's current team. */
export function requestedTeam(principal: Principal, named: string | undefined): string {
  const teamId = named ?? principal.teamId;
  if (!teamId) throw new ServerError("not_found", "No team selected");
  return teamId;
}
