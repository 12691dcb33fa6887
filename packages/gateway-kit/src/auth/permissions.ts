import * as z from "zod";

/** The roles a user can hold in a team, from most to least powerful. */
export const Role = z.enum(["owner", "admin", "member", "viewer"]);
export type Role = z.infer<typeof Role>;

/** Named permissions; API-key scopes use the same names. */
export const Permission = z.enum([
  "sessions:read",
  "sessions:write",
  "team:read",
  "team:manage",
  "billing:read",
  "billing:manage",
  "audit:read",
  "api_keys:manage",
]);
export type Permission = z.infer<typeof Permission>;

/**
 * Which permissions each role grants. Owners hold everything; admins run the team but not its
 * billing; members do the work; viewers only look.
 *
 * @example
 * ROLE_PERMISSIONS.viewer.includes("sessions:write"); // false
 */
export const ROLE_PERMISSIONS: Readonly<Record<Role, readonly Permission[]>> = Object.freeze({
  owner: Permission.options,
  admin: ["sessions:read", "sessions:write", "team:read", "team:manage", "billing:read", "audit:read", "api_keys:manage"],
  member: ["sessions:read", "sessions:write", "team:read", "billing:read", "api_keys:manage"],
  viewer: ["sessions:read", "team:read"],
});

/**
 * The permissions a role grants, or none for a user outside the team.
 *
 * @example
 * permissionsForRole("member"); // ["sessions:read", "sessions:write", ...]
 */
export function permissionsForRole(role: Role | undefined): Permission[] {
  return role ? [...ROLE_PERMISSIONS[role]] : [];
}

/**
 * The scopes an API key actually carries: the key's scopes intersected with what its owner may
 * do now, so a key never widens its owner's rights and a demoted owner's keys shrink with them.
 *
 * @example
 * effectiveScopes(["sessions:write", "billing:manage"], "member"); // ["sessions:write"]
 */
export function effectiveScopes(keyScopes: readonly string[], ownerRole: Role | undefined): string[] {
  const allowed = new Set<string>(permissionsForRole(ownerRole));
  return keyScopes.filter((scope) => allowed.has(scope));
}
