import { Email, Role } from "@keen/gateway-kit";
import * as z from "zod";
import { ReauthPassword } from "../http/reauth.js";

const TeamName = z.string().trim().min(1).max(100).regex(/^[^\u0000-\u001f\u007f]*$/, "must not contain control characters");

/** `POST /v1/teams`: a new (non-personal) team the caller owns. */
export const CreateTeamBody = z.object({ name: TeamName }).strict();

/** `PUT /v1/teams/:teamId/members/:userId`; re-authenticates (`password`, see http/reauth.ts). */
export const SetRoleBody = z.object({ role: Role, password: ReauthPassword }).strict();

/** `POST /v1/teams/:teamId/invites`: who may join, with which role, for how long; re-authenticates (`password`). */
export const CreateInviteBody = z
  .object({
    email: Email,
    role: Role.default("member"),
    /** Hours until the invite can no longer be accepted (default 7 days). */
    expiresInHours: z.number().int().min(1).max(24 * 30).default(24 * 7),
    password: ReauthPassword,
  })
  .strict();

/** `POST /v1/invites/accept`: the token the invite was created with. */
export const AcceptInviteBody = z.object({ token: z.string().min(20).max(200) }).strict();
