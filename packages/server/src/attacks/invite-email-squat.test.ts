import { randomBytes } from "node:crypto";
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { expect, it } from "vitest";
import { readOutbox } from "../mail/outbox-mailer.js";
import { api, describeEachDatabase, outboxToken, signup, useTestServer } from "../testing/harness.js";

const PASSWORD = "correct horse battery staple";

/**
 * An invite names an email address. Sign-up does not prove the address, so an attacker who
 * learns of an invite (or guesses who will be invited) signs up with the invitee's address first
 * and accepts: only an account that has verified the invited address may join.
 */
describeEachDatabase("attack: accepting an invite with an address the account never proved", (choice) => {
  const t = useTestServer(() => ({ ...choice.settings, workers: 0 }));

  it("refuses the squatter with 403 email_unverified and no membership", async () => {
    const owner = await signup(t.url);
    const victim = `victim-${randomBytes(5).toString("hex")}@keen.test`;
    const invite = await api(t.url, `/v1/teams/${owner.teamId}/invites`, { headers: owner.headers, body: { email: victim, role: "admin", password: PASSWORD } });
    expect(invite.status).toBe(201);

    const attacker = await signup(t.url, victim);
    const accepted = await api(t.url, "/v1/invites/accept", { headers: attacker.headers, body: { token: invite.body.token } });
    expect(accepted.status).toBe(403);
    expect(accepted.body.error.code).toBe("email_unverified");
    expect((await api(t.url, "/v1/me", { headers: attacker.headers })).body.user).toMatchObject({ email: victim, emailVerified: false });

    const members = await api(t.url, `/v1/teams/${owner.teamId}/members`, { headers: owner.headers });
    expect(members.body.members.map((m: { userId: string }) => m.userId)).toEqual([owner.userId]);
    const teams = await api(t.url, "/v1/teams", { headers: attacker.headers });
    expect(teams.body.teams.map((m: { teamId: string }) => m.teamId)).not.toContain(owner.teamId);
    // The invite is not spent: its rightful owner can still take it after proving the address.
    const listed = await api(t.url, `/v1/teams/${owner.teamId}/invites`, { headers: owner.headers });
    expect(listed.body.invites[0].state).toBe("open");
  });

  it("lets the invitee in once they prove the address with the token mailed to it, and no other account can use that token", async () => {
    const owner = await signup(t.url);
    const invitee = `invitee-${randomBytes(5).toString("hex")}@keen.test`;
    const invite = await api(t.url, `/v1/teams/${owner.teamId}/invites`, { headers: owner.headers, body: { email: invitee, role: "member", password: PASSWORD } });
    const account = await signup(t.url, invitee);
    expect((await api(t.url, "/v1/invites/accept", { headers: account.headers, body: { token: invite.body.token } })).status).toBe(403);

    const asked = await api(t.url, "/v1/auth/email/verification", { headers: account.headers, body: {} });
    expect(asked.status).toBe(202);
    expect(asked.body).toMatchObject({ email: invitee, sent: true });
    // The outbox holds one file per message, readable by its owner only: it carries the token.
    const mailed = (await readOutbox(t.server.config.mailOutboxDir)).filter((m) => m.to === invitee);
    expect(mailed).toHaveLength(1);
    expect((await stat(join(t.server.config.mailOutboxDir, mailed[0]!.file))).mode & 0o777).toBe(0o600);
    const token = await outboxToken(t.url, invitee);

    const other = await signup(t.url);
    const stolen = await api(t.url, "/v1/auth/email/verification/confirm", { headers: other.headers, body: { token } });
    expect(stolen.status).toBe(400);
    expect(stolen.body.error.code).toBe("invalid_verification_token");

    const confirmed = await api(t.url, "/v1/auth/email/verification/confirm", { headers: account.headers, body: { token } });
    expect(confirmed.status).toBe(200);
    expect(confirmed.body).toMatchObject({ email: invitee, emailVerified: true, alreadyVerified: false });
    expect((await api(t.url, "/v1/auth/email/verification/confirm", { headers: account.headers, body: { token } })).body.alreadyVerified).toBe(true);
    expect((await api(t.url, "/v1/me", { headers: account.headers })).body.user.emailVerified).toBe(true);
    expect((await api(t.url, "/v1/me", { headers: other.headers })).body.user.emailVerified).toBe(false);

    const accepted = await api(t.url, "/v1/invites/accept", { headers: account.headers, body: { token: invite.body.token } });
    expect(accepted.status).toBe(200);
    expect(accepted.body).toEqual({ teamId: owner.teamId, role: "member" });
  });

  it("gives the squatter neither the invites addressed to the address in a data export nor a way to delete them by erasing itself", async () => {
    const owner = await signup(t.url);
    const victim = `victim-${randomBytes(5).toString("hex")}@keen.test`;
    const invite = await api(t.url, `/v1/teams/${owner.teamId}/invites`, { headers: owner.headers, body: { email: victim, role: "member", password: PASSWORD } });
    expect(invite.status).toBe(201);
    const squatter = await signup(t.url, victim);
    const exported = await api(t.url, "/v1/me/export", { method: "POST", headers: squatter.headers });
    expect(exported.status).toBe(200);
    expect(exported.body.sections.server.invitesReceived).toEqual([]);
    expect(JSON.stringify(exported.body)).not.toContain(invite.body.id);

    const erased = await api(t.url, "/v1/me", { method: "DELETE", headers: squatter.headers, body: { password: PASSWORD } });
    expect(erased.status).toBe(200);
    const listed = await api(t.url, `/v1/teams/${owner.teamId}/invites`, { headers: owner.headers });
    expect(listed.body.invites.map((i: { id: string; state: string }) => [i.id, i.state])).toEqual([[invite.body.id, "open"]]);

    // The address's owner, once verified, still finds it in their export and can take it.
    const rightful = await signup(t.url, victim, { verifyEmail: true });
    const theirs = await api(t.url, "/v1/me/export", { method: "POST", headers: rightful.headers });
    expect(theirs.body.sections.server.invitesReceived.map((i: { id: string }) => i.id)).toEqual([invite.body.id]);
    expect((await api(t.url, "/v1/invites/accept", { headers: rightful.headers, body: { token: invite.body.token } })).status).toBe(200);
  });
});
