import { z } from "zod";
import { GrantCreditsBody } from "../admin-input.js";
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
  /** Status of success and its content type. */
  success: { status: number; type?: string };
  auth?: boolean;
}

/** Every documented operation; `openapi.test.ts` checks this list against the mounted routes. */
export const OPERATIONS: readonly Operation[] = [
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
  { method: "get", path: "/v1/runs/:id/diff", summary: "The run's unified diff", success: { status: 200, type: "text/x-diff" } },
  { method: "get", path: "/v1/runs/:id/archive", summary: "The run's result as a git bundle of its branch", success: { status: 200, type: "application/x-git-bundle" } },
  { method: "delete", path: "/v1/runs/:id", summary: "Delete a finished run (its workspace kept if the owner prefers)", success: { status: 200 } },
  { method: "get", path: "/v1/runs/:id/events", summary: "Server-Sent Events (Last-Event-ID or ?after=)", success: { status: 200, type: "text/event-stream" } },

  // Outbound webhooks.
  { method: "post", path: "/v1/webhooks", summary: "Register an endpoint for run events; the answer carries its signing secret, once", body: CreateWebhookBody, success: { status: 201 } },
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
      security: [{ bearer: [] }, { apiKey: [] }],
      ...(parameters.length ? { parameters } : {}),
      ...(op.rawBody ? { requestBody: { required: true, content: Object.fromEntries(op.rawBody.map((type) => [type, { schema: { type: "string", contentMediaType: type } }])) } } : {}),
      ...(op.body ? { requestBody: { required: true, content: { "application/json": { schema: schemaOf(op.body) } } } } : {}),
      responses: {
        [String(op.success.status)]: { description: "Success", content: { [op.success.type ?? "application/json"]: { schema: {} } } },
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
