import { normaliseEmail, type Principal, type UserRecord, type UserStore } from "@keen/gateway-kit";

/**
 * Who is a server admin: the ONE rule every admin decision goes through (credit grants,
 * `repo.path` runs, `admin` in `GET /v1/me`).
 *
 * An account is an admin when its email is listed in `adminEmails` (KEEN_ADMIN_EMAILS) AND that
 * email is verified: signed up through an OAuth provider that vouched for the address, or marked
 * by an operator with `keen admin verify-email`. Listing alone gives nothing, or whoever signs
 * up first with a listed address would be an admin without owning it.
 *
 * @example
 * isAdminUser({ email: "ops@example.com", emailVerified: true }, ["ops@example.com"]); // true
 * isAdminUser({ email: "ops@example.com", emailVerified: false }, ["ops@example.com"]); // false
 */
export function isAdminUser(user: Pick<UserRecord, "email" | "emailVerified"> | undefined, adminEmails: Iterable<string>): boolean {
  if (!user || user.emailVerified !== true) return false;
  const email = normaliseEmail(user.email);
  for (const listed of adminEmails) if (normaliseEmail(listed) === email) return true;
  return false;
}

/** Whether a principal's user is an admin (`isAdminUser` on the user as stored now). */
export type AdminCheck = (principal: Principal) => Promise<boolean>;

/**
 * The admin check a server uses: reads the principal's user on every call, so a verification
 * (or an erasure) counts at once, with no restart.
 */
export function adminCheck(users: Pick<UserStore, "findById">, adminEmails: readonly string[]): AdminCheck {
  const listed = adminEmails.map(normaliseEmail);
  return async (principal) => {
    if (listed.length === 0) return false;
    return isAdminUser(await users.findById(principal.userId), listed);
  };
}
