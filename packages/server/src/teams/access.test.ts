import type { Principal } from "@keen/gateway-kit";
import { expect, it } from "vitest";
import { api, describeEachDatabase, signup, useTestServer } from "../testing/harness.js";
import { teamAccess } from "./access.js";

/**
 * A request authenticated just before its caller's erasure committed reaches `teamAccess` with a
 * principal whose memberships are gone. The answer must be the erasure's 410, the same as from a
 * route that writes for the caller, and never "no such team" for a team the caller owned.
 */
describeEachDatabase("teamAccess after the caller's erasure", (database) => {
  const t = useTestServer(() => ({ ...database.settings, workers: 0 }));

  it("is 410 account_erased for an erased caller, and 404 for a live caller outside the team", async () => {
    const user = await signup(t.url);
    const stranger = await signup(t.url);
    const principal = (account: typeof user): Principal => ({ userId: account.userId, teamId: account.teamId, via: "jwt", scopes: [] });
    await expect(teamAccess(t.server.auth, principal(user), user.teamId)).resolves.toMatchObject({ role: "owner" });

    const erased = await api(t.url, "/v1/me", { method: "DELETE", headers: user.headers, body: { password: "correct horse battery staple" } });
    expect(erased.status).toBe(200);
    await expect(teamAccess(t.server.auth, principal(user), user.teamId)).rejects.toMatchObject({ code: "account_erased" });
    await expect(teamAccess(t.server.auth, principal(stranger), user.teamId)).rejects.toMatchObject({ code: "not_found" });
  });
});
