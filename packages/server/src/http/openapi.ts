import {
  ChallengeBody,
  CreateApiKeyBody,
  EmailVerificationConfirmBody,
  FactorCodeBody,
  LoginBody,
  LogoutBody,
  MfaLoginBody,
  OAuthCallbackQuery,
  PasswordChangeBody,
  PasswordConfirmBody,
  RefreshBody,
  SignOutEverywhereBody,
  SignupBody,
  SmsEnrolBody,
  SmsLoginBody,
  TotpEnrolBody,
  WebAuthnRegisterBody,
} from "@keen/gateway-kit";
import * as z from "zod";
import { GrantCreditsBody } from "../admin-input.js";
import { AuditQuery, AuditVerifyQuery } from "../audit/audit-input.js";
import { CheckoutBody } from "../billing/billing-input.js";
import { BudgetsQuery, PutBudgetBody } from "../budgets/budget-input.js";
import { EraseAccountBody } from "../privacy/privacy-input.js";
import { AcceptInviteBody, CreateInviteBody, CreateTeamBody, SetRoleBody } from "../teams/team-input.js";
import { PreferencesBody } from "../preferences-input.js";
import { CreateRunBody, ListRunsQuery } from "../runs/run-input.js";
import { CreateWebhookBody, ListDeliveriesQuery } from "../webhooks/webhook-input.js";

const ErrorBody = z.object({
  error: z.object({ code: z.string(), message: z.string(), details: z.record(z.string(), z.unknown()).optional(), requestId: z.string() }),
});


interface Operation {
  method: "get" | "post" | "put" | "delete";
  /** A koa-router path (`/v1/runs/:id`). */
  path: string;
  summary: string;
  body?: z.ZodType;
  /** A raw (non-JSON) request body: its accepted content types. */
  rawBody?: string[];
  query?: z.ZodObject;
  /** Status of success and its content type (`none`: no body, e.g. 204 or a redirect). */
  success: { status: number; type?: string };
  /** False for routes that take no bearer token or API key (sign-up, login, the Stripe webhook). */
  auth?: boolean;
  /** Body optional (every field has a default). */
  optionalBody?: boolean;
}

/** gateway-kit's auth router, mounted at `/v1/auth`. */
const AUTH_OPERATIONS: readonly Operation[] = [
  { method: "post", path: "/v1/auth/signup", summary: "Create an account (and its personal team); returns tokens", body: SignupBody, success: { status: 201 }, auth: false },
  { method: "post", path: "/v1/auth/login", summary: "Log in with email and password; may ask for a second factor", body: LoginBody, success: { status: 200 }, auth: false },
  { method: "post", path: "/v1/auth/login/mfa", summary: "Complete a login with a second factor", body: MfaLoginBody, success: { status: 200 }, auth: false },
  { method: "post", path: "/v1/auth/login/mfa/webauthn/options", summary: "WebAuthn assertion options for a login challenge", body: ChallengeBody, success: { status: 200 }, auth: false },
  { method: "post", path: "/v1/auth/login/mfa/sms", summary: "Send an SMS code for a login challenge", body: SmsLoginBody, success: { status: 202 }, auth: false },
  { method: "post", path: "/v1/auth/token/refresh", summary: "Rotate a refresh token for new tokens", body: RefreshBody, success: { status: 200 }, auth: false },
  { method: "post", path: "/v1/auth/logout", summary: "End the session of a refresh token (or of the caller)", body: LogoutBody, optionalBody: true, success: { status: 204, type: "none" }, auth: false },
  { method: "get", path: "/v1/auth/me", summary: "The signed-in user and their memberships", success: { status: 200 } },
  { method: "post", path: "/v1/auth/email/verification", summary: "Mail a verification token to the account's address (202; 200 sent:false when verified already; 429 verification_email_limit)", success: { status: 202 } },
  { method: "post", path: "/v1/auth/email/verification/confirm", summary: "Verify the account's address with the mailed token (same account only; 400 invalid_verification_token, 410 verification_token_expired or verification_token_used)", body: EmailVerificationConfirmBody, success: { status: 200 } },
  { method: "post", path: "/v1/auth/password", summary: "Change the password (ends other sessions)", body: PasswordChangeBody, success: { status: 200 } },
  { method: "post", path: "/v1/auth/logout/everywhere", summary: "End every session, optionally revoking API keys", body: SignOutEverywhereBody, optionalBody: true, success: { status: 200 } },
  { method: "get", path: "/v1/auth/sessions", summary: "The user's live sessions", success: { status: 200 } },
  { method: "delete", path: "/v1/auth/sessions/:id", summary: "End one session", success: { status: 204, type: "none" } },
  { method: "post", path: "/v1/auth/api-keys", summary: "Create an API key: re-authenticates (password, or a sign-in in the last 10 minutes), 401 reauthentication_required otherwise; the secret is shown once", body: CreateApiKeyBody, success: { status: 201 } },
  { method: "get", path: "/v1/auth/api-keys", summary: "The user's API keys (never their secrets)", success: { status: 200 } },
  { method: "delete", path: "/v1/auth/api-keys/:id", summary: "Revoke an API key", success: { status: 204, type: "none" } },
  { method: "get", path: "/v1/auth/mfa", summary: "The user's second factors", success: { status: 200 } },
  { method: "post", path: "/v1/auth/mfa/totp", summary: "Start enrolling an authenticator app (re-authenticates: password, or a recent sign-in without one)", body: TotpEnrolBody, optionalBody: true, success: { status: 201 } },
  { method: "post", path: "/v1/auth/mfa/totp/verify", summary: "Confirm an authenticator app with a code", body: FactorCodeBody, success: { status: 200 } },
  { method: "post", path: "/v1/auth/mfa/sms", summary: "Start enrolling a phone for SMS codes (re-authenticates: password, or a recent sign-in without one)", body: SmsEnrolBody, success: { status: 201 } },
  { method: "post", path: "/v1/auth/mfa/sms/verify", summary: "Confirm a phone with its code", body: FactorCodeBody, success: { status: 200 } },
  { method: "post", path: "/v1/auth/mfa/webauthn/register/options", summary: "WebAuthn registration options (re-authenticates: password, or a recent sign-in without one)", body: PasswordConfirmBody, optionalBody: true, success: { status: 200 } },
  { method: "post", path: "/v1/auth/mfa/webauthn/register/verify", summary: "Register a WebAuthn authenticator", body: WebAuthnRegisterBody, success: { status: 201 } },
  { method: "delete", path: "/v1/auth/mfa/factors/:id", summary: "Remove a second factor (re-authenticates: password, or a recent sign-in without one)", body: PasswordConfirmBody, optionalBody: true, success: { status: 204, type: "none" } },
  { method: "post", path: "/v1/auth/mfa/recovery-codes", summary: "Replace the recovery codes (re-authenticates: password, or a recent sign-in without one)", body: PasswordConfirmBody, optionalBody: true, success: { status: 200 } },
  { method: "get", path: "/v1/auth/oauth/:provider/start", summary: "Start an OAuth sign-in: a redirect to the provider (or { url } for JSON clients)", success: { status: 302, type: "none" }, auth: false },
  { method: "get", path: "/v1/auth/oauth/:provider/callback", summary: "Finish an OAuth sign-in; returns tokens", query: OAuthCallbackQuery, success: { status: 200 }, auth: false },
  { method: "get", path: "/v1/auth/.well-known/jwks.json", summary: "The public keys that verify access tokens", success: { status: 200 }, auth: false },
];

/** Billing, budgets, teams and invites, audit, data rights. */
const ACCOUNT_OPERATIONS: readonly Operation[] = [
  { method: "get", path: "/v1/billing/packs", summary: "The credit packs on sale and whether billing is on", success: { status: 200 } },
  { method: "post", path: "/v1/billing/checkout", summary: "Start a Stripe Checkout for a credit pack for the team wallet (owners)", body: CheckoutBody, success: { status: 201 } },
  { method: "post", path: "/v1/billing/webhook", summary: "Stripe's signed webhook: grants paid credits once per session", rawBody: ["application/json"], success: { status: 200 }, auth: false },
  { method: "get", path: "/v1/budgets", summary: "The team's budgets and the caller's own, with this period's spend", query: BudgetsQuery, success: { status: 200 } },
  { method: "put", path: "/v1/budgets", summary: "Set (or with limit null remove) a team budget (owners, admins) or the caller's own", body: PutBudgetBody, success: { status: 200 } },
  { method: "get", path: "/v1/teams", summary: "The caller's teams with role and permissions", success: { status: 200 } },
  { method: "post", path: "/v1/teams", summary: "Create a team the caller owns", body: CreateTeamBody, success: { status: 201 } },
  { method: "get", path: "/v1/teams/:teamId/members", summary: "The team's members and roles", success: { status: 200 } },
  { method: "put", path: "/v1/teams/:teamId/members/:userId", summary: "Change a member's role (owners, admins; owners only for the owner role): re-authenticates (password, or a sign-in in the last 10 minutes; never an API key), 401 reauthentication_required otherwise", body: SetRoleBody, success: { status: 200 } },
  { method: "delete", path: "/v1/teams/:teamId/members/:userId", summary: "Remove a member, or leave (the last owner stays)", success: { status: 200 } },
  { method: "post", path: "/v1/teams/:teamId/invites", summary: "Invite an email address: re-authenticates (password, or a sign-in in the last 10 minutes; never an API key), 401 reauthentication_required otherwise; the token is shown once", body: CreateInviteBody, success: { status: 201 } },
  { method: "get", path: "/v1/teams/:teamId/invites", summary: "The team's invites and their state", success: { status: 200 } },
  { method: "delete", path: "/v1/teams/:teamId/invites/:inviteId", summary: "Revoke an open invite", success: { status: 200 } },
  { method: "post", path: "/v1/invites/accept", summary: "Join a team with an invite addressed to the caller's email, once that email is verified (403 email_unverified otherwise)", body: AcceptInviteBody, success: { status: 200 } },
  { method: "get", path: "/v1/audit", summary: "A page of the team's audit chain, oldest first (owners, admins)", query: AuditQuery, success: { status: 200 } },
  { method: "get", path: "/v1/audit/verify", summary: "Verify the team's audit hash chain", query: AuditVerifyQuery, success: { status: 200 } },
  { method: "post", path: "/v1/me/export", summary: "Download everything kept about the caller (JSON attachment)", success: { status: 200 } },
  { method: "delete", path: "/v1/me", summary: "Erase the caller's account: re-authenticates (password, or a sign-in in the last 10 minutes; never an API key), 401 reauthentication_required when missing, 403 invalid_password when wrong", body: EraseAccountBody, optionalBody: true, success: { status: 200 } },
];

/** Every documented operation; `openapi.test.ts` checks this list against the mounted routes. */
export const OPERATIONS: readonly Operation[] = [
  ...AUTH_OPERATIONS,
  ...ACCOUNT_OPERATIONS,
  { method: "get", path: "/v1/me", summary: "The caller, their team and scopes", success: { status: 200 } },
  { method: "get", path: "/v1/me/preferences", summary: "The caller's preferences", success: { status: 200 } },
  { method: "put", path: "/v1/me/preferences", summary: "Set the caller's preferences (keepWorkspaces)", body: PreferencesBody, success: { status: 200 } },
  { method: "post", path: "/v1/uploads", summary: "Upload a repository (.tar, .tar.gz or .zip as the raw body); runs start from it with repo.uploadId", rawBody: ["application/gzip", "application/x-tar", "application/zip", "application/octet-stream"], success: { status: 201 } },
  { method: "get", path: "/v1/credits", summary: "The team wallet's balance in micro-credits", success: { status: 200 } },
  { method: "post", path: "/v1/admin/credits/grant", summary: "Grant credits to a team (admins)", body: GrantCreditsBody, success: { status: 201 } },
  { method: "post", path: "/v1/runs", summary: "Start a run: 202, then follow its events", body: CreateRunBody, success: { status: 202 } },
  { method: "get", path: "/v1/runs", summary: "The team's runs, newest first", query: ListRunsQuery, success: { status: 200 } },
  { method: "get", path: "/v1/runs/:id", summary: "A run with its agent tree", success: { status: 200 } },
  { method: "post", path: "/v1/runs/:id/cancel", summary: "Cancel a queued or running run", success: { status: 202 } },
  { method: "post", path: "/v1/runs/:id/resume", summary: "Continue an interrupted run (or a failed one with a snapshot) from its snapshot", success: { status: 202 } },
  { method: "get", path: "/v1/runs/:id/diff", summary: "The run's unified diff; 429 too_many_downloads past --max-downloads-per-user / --max-downloads", success: { status: 200, type: "text/x-diff" } },
  { method: "get", path: "/v1/runs/:id/archive", summary: "The run's result as a git bundle of its branch; 429 too_many_downloads past --max-downloads-per-user / --max-downloads", success: { status: 200, type: "application/x-git-bundle" } },
  { method: "delete", path: "/v1/runs/:id", summary: "Delete a finished run (its workspace kept if the owner prefers)", success: { status: 200 } },
  { method: "get", path: "/v1/runs/:id/events", summary: "Server-Sent Events (Last-Event-ID or ?after=); 429 too_many_streams past --max-streams-per-user / --max-streams", success: { status: 200, type: "text/event-stream" } },

  // Outbound webhooks.
  { method: "post", path: "/v1/webhooks", summary: "Register an endpoint for run events: re-authenticates (password, or a sign-in in the last 10 minutes; never an API key), 401 reauthentication_required otherwise; the answer carries its signing secret, once", body: CreateWebhookBody, success: { status: 201 } },
  { method: "get", path: "/v1/webhooks", summary: "The team's webhook endpoints (no secrets)", success: { status: 200 } },
  { method: "delete", path: "/v1/webhooks/:id", summary: "Delete an endpoint and its delivery log", success: { status: 200 } },
  { method: "get", path: "/v1/webhooks/:id/deliveries", summary: "Delivery attempts to an endpoint, newest first", query: ListDeliveriesQuery, success: { status: 200 } },
];

const toOpenApiPath = (path: string) => path.replace(/:([A-Za-z_]+)/g, "{$1}");
const schemaOf = (schema: z.ZodType) => z.toJSONSchema(schema, { target: "draft-2020-12", io: "input", unrepresentable: "any" });

/**
 * The OpenAPI 3.1 document of the `/v1` API, built from the same zod schemas the routes
 * validate with.
 *
 * @example
 * ctx.body = openApiDocument();
 */
export function openApiDocument(): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const op of OPERATIONS) {
    const path = toOpenApiPath(op.path);
    const parameters: unknown[] = [];
    for (const match of op.path.matchAll(/:([A-Za-z_]+)/g)) parameters.push({ name: match[1], in: "path", required: true, schema: { type: "string" } });
    if (op.query) {
      const shape = schemaOf(op.query) as { properties?: Record<string, unknown>; required?: string[] };
      for (const [name, schema] of Object.entries(shape.properties ?? {})) parameters.push({ name, in: "query", required: shape.required?.includes(name) ?? false, schema });
    }
    paths[path] ??= {};
    paths[path]![op.method] = {
      summary: op.summary,
      security: op.auth === false ? [] : [{ bearer: [] }, { apiKey: [] }],
      ...(parameters.length ? { parameters } : {}),
      ...(op.rawBody ? { requestBody: { required: true, content: Object.fromEntries(op.rawBody.map((type) => [type, { schema: { type: "string", contentMediaType: type } }])) } } : {}),
      ...(op.body ? { requestBody: { required: !op.optionalBody, content: { "application/json": { schema: schemaOf(op.body) } } } } : {}),
      responses: {
        [String(op.success.status)]:
          op.success.type === "none" ? { description: "Success" } : { description: "Success", content: { [op.success.type ?? "application/json"]: { schema: {} } } },
        default: { description: "An error", content: { "application/json": { schema: schemaOf(ErrorBody) } } },
      },
    };
  }
  return {
    openapi: "3.1.0",
    info: { title: "keen server", version: "1" },
    jsonSchemaDialect: "https://json-schema.org/draft/2020-12/schema",
    components: {
      securitySchemes: {
        bearer: { type: "http", scheme: "bearer" },
        apiKey: { type: "apiKey", in: "header", name: "X-API-Key" },
      },
    },
    paths,
  };
}
