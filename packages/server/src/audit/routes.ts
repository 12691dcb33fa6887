import type { Router } from "@koa/router";
import { listAuditEvents, validate, verifyAuditChain, type AuditRecord, type AuthService } from "@keen/gateway-kit";
import type { Kysely } from "kysely";
import type * as z from "zod";
import { requestedTeam, teamAccess } from "../teams/access.js";
import { AuditQuery, AuditVerifyQuery } from "./audit-input.js";

const view = (r: AuditRecord) => ({
  seq: r.seq,
  at: r.at.toISOString(),
  action: r.action,
  result: r.result,
  actorId: r.actorId,
  target: r.target,
  ip: r.ip,
  requestId: r.requestId,
  details: r.details,
  hash: r.hash,
  prevHash: r.prevHash,
  scrubbed: r.scrubbedAt !== null,
});

/**
 * The team's audit chain (gateway-kit's audit log, one hash chain per team), for holders of
 * `audit:read` (owners, admins): `GET /v1/audit` pages it oldest first by an opaque cursor;
 * `GET /v1/audit/verify` walks the chain and reports `ok` or the first row that fails and why.
 */
export function mountAuditRoutes(router: Router, deps: { db: Kysely<any>; auth: AuthService }): void {
  const { auth, db } = deps;

  router.get("/audit", validate({ query: AuditQuery }), async (ctx) => {
    const principal = ctx.state.principal!;
    const query = ctx.state.validated!.query as z.output<typeof AuditQuery>;
    const access = await teamAccess(auth, principal, requestedTeam(principal, query.teamId), "audit:read");
    // One more than asked tells whether another page follows.
    const rows = await listAuditEvents(db, access.teamId, { afterSeq: query.cursor ? Number(query.cursor) : 0, limit: query.limit + 1 });
    const page = rows.slice(0, query.limit);
    ctx.body = { teamId: access.teamId, events: page.map(view), nextCursor: rows.length > query.limit ? String(page[page.length - 1]!.seq) : null };
  });

  router.get("/audit/verify", validate({ query: AuditVerifyQuery }), async (ctx) => {
    const principal = ctx.state.principal!;
    const query = ctx.state.validated!.query as z.output<typeof AuditVerifyQuery>;
    const access = await teamAccess(auth, principal, requestedTeam(principal, query.teamId), "audit:read");
    ctx.body = await verifyAuditChain(db, access.teamId);
  });
}
