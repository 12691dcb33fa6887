import * as z from "zod";

/** `GET /v1/audit`: a page of the team's audit chain, oldest first, after a cursor. */
export const AuditQuery = z
  .object({
    teamId: z.string().min(1).max(100).optional(),
    /** The `nextCursor` of the previous page. */
    cursor: z.string().regex(/^[1-9][0-9]{0,14}$/, "must be a cursor from a previous page").optional(),
    limit: z.coerce.number().int().min(1).max(500).default(100),
  })
  .strict();

/** `GET /v1/audit/verify`. */
export const AuditVerifyQuery = z.object({ teamId: z.string().min(1).max(100).optional() }).strict();
