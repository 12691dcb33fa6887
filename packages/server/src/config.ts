import { resolve } from "node:path";
import { CreditPack } from "@keen/gateway-kit";
import * as z from "zod";

/** One setting: its env variable, its flag, and what it does (printed by `keen serve --help`). */
interface Setting {
  key: keyof ServerConfigInput;
  env: string;
  flag: string;
  help: string;
}

const Port = z.coerce.number().int().min(0).max(65_535);
const Millis = z.coerce.number().int().min(10).max(24 * 3600_000);
const Bool = z.union([z.boolean(), z.enum(["true", "false", "1", "0"]).transform((v) => v === "true" || v === "1")]);
const MicroCredits = z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

/**
 * Every server setting, validated once. Paths are made absolute; defaults make `keen serve`
 * start with no set-up (PGlite and workspaces under the data dir).
 */
export const ServerConfig = z
  .object({
    port: Port.default(8080),
    host: z.string().min(1).max(255).default("127.0.0.1"),
    dataDir: z.string().min(1).default(".keen-server").transform((p) => resolve(p)),
    /** PostgreSQL connection string; absent means an embedded PGlite database under `dataDir`. */
    databaseUrl: z.string().regex(/^postgres(ql)?:\/\//, "must be a postgres:// URL").optional(),
    /** PostgreSQL schema (search_path) to keep the server's tables in. */
    databaseSchema: z.string().regex(/^[a-z_][a-z0-9_]{0,62}$/, "must be a lower-case SQL identifier").optional(),
    workspacesDir: z.string().min(1).optional(),
    /** Where the outbox mailer writes verification emails (default `<dataDir>/outbox`). */
    mailOutboxDir: z.string().min(1).optional(),
    /** Send email by POSTing `{ to, subject, text }` as JSON here instead of writing it to the outbox. */
    mailWebhookUrl: z.url({ protocol: /^https?$/ }).optional(),
    /** Sent to the mail webhook as `Authorization: Bearer <token>`. */
    mailWebhookToken: z.string().min(16, "must be at least 16 characters").max(512).optional(),
    /** Lifetime of an email verification token, in hours. */
    emailVerificationTtlHours: z.coerce.number().int().min(1).max(24 * 30).default(24),
    modelBaseUrl: z.url({ protocol: /^https?$/ }).optional(),
    modelApiKey: z.string().min(1).optional(),
    modelMaxRetries: z.coerce.number().int().min(0).max(50).optional(),
    model: z.string().min(1).max(100).default("claude-opus-4-5"),
    logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
    /** Accept `repo: { path }` from any signed-in user (a single-user machine). */
    localMode: Bool.default(false),
    /** Emails of server admins (credit grants, `repo.path` runs). */
    adminEmails: z
      .union([z.array(z.string()), z.string().transform((s) => s.split(",").map((e) => e.trim()).filter(Boolean))])
      .default([])
      .transform((list) => list.map((e) => e.toLowerCase())),
    /** Runs executed at once by this process; 0 makes it an API-only process. */
    workers: z.coerce.number().int().min(0).max(64).default(2),
    /** Credits held when a run is created, settled to the actual price when it ends. */
    runReserve: MicroCredits.default(5_000_000),
    /** Concurrent runs per user. */
    maxRunsPerUser: z.coerce.number().int().min(1).max(1000).default(2),
    maxUploadBytes: z.coerce.number().int().min(1024).default(100 * 1024 * 1024),
    maxWorkspaceBytes: z.coerce.number().int().min(1024).default(5 * 1024 * 1024 * 1024),
    heartbeatMs: Millis.default(5_000),
    /** A running run whose heartbeat is older than this is taken over by another worker. */
    staleAfterMs: Millis.default(30_000),
    sseHeartbeatMs: Millis.default(15_000),
    /** Events a stream connection buffers before it falls back to paging from the table. */
    streamBuffer: z.coerce.number().int().min(1).max(100_000).default(1_000),
    /** Event streams (SSE and WebSocket together) one user may have open on this process. */
    maxStreamsPerUser: z.coerce.number().int().min(1).max(100_000).default(20),
    /** Event streams this process keeps open in all, whoever opened them. */
    maxStreams: z.coerce.number().int().min(1).max(1_000_000).default(2_000),
    /** Result downloads (`/diff`, `/archive`) one user may have in progress on this process: each holds a git process. */
    maxDownloadsPerUser: z.coerce.number().int().min(1).max(10_000).default(4),
    /** Result downloads this process serves at once, whoever asked. */
    maxDownloads: z.coerce.number().int().min(1).max(100_000).default(64),
    /** A download whose client takes no bytes for this long is ended, and its git with it. */
    downloadStallSeconds: z.coerce.number().int().min(1).max(86_400).default(60),
    /** Run jobs through `in-process` (PGlite) or `pg-boss` (PostgreSQL). Default: by database. */
    queue: z.enum(["in-process", "pg-boss"]).optional(),
    /** Run commands under bubblewrap. Only turn off on a machine without it, never in production. */
    sandbox: Bool.default(true),
    // Billing (Stripe Checkout for credit packs). Off until a secret key is set.
    /** Stripe secret key; with it, `POST /v1/billing/checkout` sells the credit packs. */
    stripeSecretKey: z.string().regex(/^(sk|rk)_(test|live)_[A-Za-z0-9_]+$/, "must be a Stripe secret key (sk_test_…, sk_live_…)").optional(),
    /** Webhook signing secrets (`whsec_…`), several while rotating. */
    stripeWebhookSecrets: z
      .union([z.array(z.string()), z.string().transform((s) => s.split(",").map((e) => e.trim()).filter(Boolean))])
      .default([])
      .pipe(z.array(z.string().regex(/^whsec_[A-Za-z0-9+/=_-]+$/, "must be a Stripe webhook secret (whsec_…)"))),
    /** The Stripe API's base URL (a local stand-in in tests). Default Stripe's. */
    stripeApiUrl: z.url({ protocol: /^https?$/ }).optional(),
    /** The packs on sale: JSON `[{ id, name, credits, unitAmount, currency }]`. */
    creditPacks: z
      .union([z.array(z.unknown()), z.string()])
      .transform((value, ctx) => {
        if (typeof value !== "string") return value;
        try {
          return JSON.parse(value) as unknown;
        } catch {
          ctx.addIssue({ code: "custom", message: "must be a JSON array of packs" });
          return z.NEVER;
        }
      })
      .pipe(z.array(CreditPack).min(1).max(50))
      .default([{ id: "starter", name: "10 credits", credits: 10_000_000, unitAmount: 1_000, currency: "usd" }]),
    /** Where Stripe sends the buyer after paying, and after giving up. */
    billingSuccessUrl: z.url({ protocol: /^https?$/ }).optional(),
    billingCancelUrl: z.url({ protocol: /^https?$/ }).optional(),
    /** API requests per user per minute (shared by every process through the database). */
    rateLimit: z.coerce.number().int().min(1).max(1_000_000).default(600),
    /**
     * How many leading bits of an IPv6 address name one client for the login limiter and the
     * rate limit (32–128). One subscriber holds at least a /64; set 56 or 48 where providers hand
     * out those, so rotating through them does not buy fresh attempts.
     */
    ipv6LimitPrefix: z.coerce.number().int().min(32).max(128).default(64),
    /** Let webhooks reach loopback, private and link-local addresses (self-hosted setups, tests). */
    webhookAllowPrivate: Bool.default(false),
    /** Deadline of one webhook delivery attempt, connect to last byte read. */
    webhookTimeoutMs: Millis.default(10_000),
    /** Attempts per webhook event before it is marked failed. */
    webhookMaxAttempts: z.coerce.number().int().min(1).max(20).default(8),
    /** Wait before the second attempt; each later one waits four times longer (capped at 6 h). */
    webhookRetryBaseMs: Millis.default(10_000),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.mailWebhookToken && !c.mailWebhookUrl) ctx.addIssue({ code: "custom", path: ["mailWebhookToken"], message: "needs --mail-webhook-url" });
    if (!c.stripeSecretKey) return;
    for (const key of ["billingSuccessUrl", "billingCancelUrl"] as const) {
      if (!c[key]) ctx.addIssue({ code: "custom", path: [key], message: "is needed when a Stripe key is set" });
    }
    if (c.stripeWebhookSecrets.length === 0) ctx.addIssue({ code: "custom", path: ["stripeWebhookSecrets"], message: "is needed when a Stripe key is set" });
    if (new Set(c.creditPacks.map((p) => p.id)).size !== c.creditPacks.length) ctx.addIssue({ code: "custom", path: ["creditPacks"], message: "pack ids must be unique" });
  })
  .transform((c) => ({ ...c, workspacesDir: resolve(c.workspacesDir ?? `${c.dataDir}/workspaces`), mailOutboxDir: resolve(c.mailOutboxDir ?? `${c.dataDir}/outbox`) }));

export type ServerConfig = z.output<typeof ServerConfig>;
export type ServerConfigInput = z.input<typeof ServerConfig>;

/** Env variables and flags, in the order `--help` lists them. */
export const SETTINGS: readonly Setting[] = [
  { key: "port", env: "PORT", flag: "--port", help: "TCP port (default 8080; 0 picks a free one)" },
  { key: "host", env: "KEEN_HOST", flag: "--host", help: "interface to listen on (default 127.0.0.1)" },
  { key: "dataDir", env: "KEEN_DATA_DIR", flag: "--data-dir", help: "embedded database and workspaces (default ./.keen-server)" },
  { key: "databaseUrl", env: "DATABASE_URL", flag: "--database-url", help: "PostgreSQL URL; without it PGlite runs under the data dir" },
  { key: "databaseSchema", env: "KEEN_DATABASE_SCHEMA", flag: "--database-schema", help: "PostgreSQL schema for the server's tables" },
  { key: "workspacesDir", env: "KEEN_WORKSPACES_DIR", flag: "--workspaces-dir", help: "root of <user>/<run> checkouts (default <data dir>/workspaces)" },
  { key: "mailOutboxDir", env: "KEEN_MAIL_OUTBOX_DIR", flag: "--mail-outbox-dir", help: "folder the outbox mailer writes verification emails to, one .eml file each (default <data dir>/outbox)" },
  { key: "mailWebhookUrl", env: "KEEN_MAIL_WEBHOOK_URL", flag: "--mail-webhook-url", help: "POST each email as JSON {to,subject,text} here instead of writing it to the outbox" },
  { key: "mailWebhookToken", env: "KEEN_MAIL_WEBHOOK_TOKEN", flag: "--mail-webhook-token", help: "bearer token sent to the mail webhook" },
  { key: "emailVerificationTtlHours", env: "KEEN_EMAIL_VERIFICATION_TTL_HOURS", flag: "--email-verification-ttl-hours", help: "hours an email verification token works (default 24)" },
  { key: "modelBaseUrl", env: "ANTHROPIC_BASE_URL", flag: "--model-base-url", help: "Messages API base URL" },
  { key: "modelMaxRetries", env: "KEEN_MODEL_MAX_RETRIES", flag: "--model-max-retries", help: "retries of an overloaded or failing model call before a run ends interrupted (default agent-core's)" },
  { key: "modelApiKey", env: "ANTHROPIC_API_KEY", flag: "--model-api-key", help: "Messages API key (never shown to runs)" },
  { key: "model", env: "KEEN_MODEL", flag: "--model", help: "default model (default claude-opus-4-5)" },
  { key: "logLevel", env: "LOG_LEVEL", flag: "--log-level", help: "fatal|error|warn|info|debug|trace|silent (default info)" },
  { key: "localMode", env: "KEEN_LOCAL_MODE", flag: "--local-mode", help: "let any user run on a local path (single-user machines)" },
  { key: "adminEmails", env: "KEEN_ADMIN_EMAILS", flag: "--admin-emails", help: "comma-separated emails of server admins" },
  { key: "workers", env: "KEEN_WORKERS", flag: "--workers", help: "runs this process executes at once; 0 = API only (default 2)" },
  { key: "runReserve", env: "KEEN_RUN_RESERVE", flag: "--run-reserve", help: "micro-credits held per run until it settles (default 5000000)" },
  { key: "maxRunsPerUser", env: "KEEN_MAX_RUNS_PER_USER", flag: "--max-runs-per-user", help: "concurrent runs per user (default 2)" },
  { key: "maxUploadBytes", env: "KEEN_MAX_UPLOAD_BYTES", flag: "--max-upload-bytes", help: "largest repository upload, as sent (default 100 MiB)" },
  { key: "maxWorkspaceBytes", env: "KEEN_MAX_WORKSPACE_BYTES", flag: "--max-workspace-bytes", help: "disk a user's workspaces and uploads may use (default 5 GiB)" },
  { key: "heartbeatMs", env: "KEEN_HEARTBEAT_MS", flag: "--heartbeat-ms", help: "worker heartbeat interval (default 5000)" },
  { key: "staleAfterMs", env: "KEEN_STALE_AFTER_MS", flag: "--stale-after-ms", help: "heartbeat age after which a run is taken over (default 30000)" },
  { key: "sseHeartbeatMs", env: "KEEN_STREAM_HEARTBEAT_MS", flag: "--stream-heartbeat-ms", help: "idle stream keep-alive interval (default 15000)" },
  { key: "streamBuffer", env: "KEEN_STREAM_BUFFER", flag: "--stream-buffer", help: "events buffered per stream connection (default 1000)" },
  { key: "maxStreamsPerUser", env: "KEEN_MAX_STREAMS_PER_USER", flag: "--max-streams-per-user", help: "SSE + WebSocket event streams one user may hold open on this process; 429 beyond (default 20)" },
  { key: "maxStreams", env: "KEEN_MAX_STREAMS", flag: "--max-streams", help: "event streams this process holds open in all; 429 beyond (default 2000)" },
  { key: "maxDownloadsPerUser", env: "KEEN_MAX_DOWNLOADS_PER_USER", flag: "--max-downloads-per-user", help: "/diff and /archive downloads one user may have in progress on this process; 429 beyond (default 4)" },
  { key: "maxDownloads", env: "KEEN_MAX_DOWNLOADS", flag: "--max-downloads", help: "/diff and /archive downloads this process serves at once; 429 beyond (default 64)" },
  { key: "downloadStallSeconds", env: "KEEN_DOWNLOAD_STALL_SECONDS", flag: "--download-stall-seconds", help: "end a download whose client takes no bytes for this long (default 60)" },
  { key: "queue", env: "KEEN_QUEUE", flag: "--queue", help: "in-process|pg-boss (default: pg-boss on PostgreSQL)" },
  { key: "sandbox", env: "KEEN_SANDBOX", flag: "--sandbox", help: "run agent commands under bubblewrap (default true)" },
  { key: "stripeSecretKey", env: "STRIPE_SECRET_KEY", flag: "--stripe-secret-key", help: "Stripe secret key; turns on buying credit packs" },
  { key: "stripeWebhookSecrets", env: "STRIPE_WEBHOOK_SECRET", flag: "--stripe-webhook-secret", help: "comma-separated webhook signing secrets (whsec_…)" },
  { key: "stripeApiUrl", env: "KEEN_STRIPE_API_URL", flag: "--stripe-api-url", help: "Stripe API base URL (default Stripe's)" },
  { key: "creditPacks", env: "KEEN_CREDIT_PACKS", flag: "--credit-packs", help: "JSON [{id,name,credits,unitAmount,currency}] of packs on sale" },
  { key: "billingSuccessUrl", env: "KEEN_BILLING_SUCCESS_URL", flag: "--billing-success-url", help: "where Stripe sends a buyer after paying" },
  { key: "billingCancelUrl", env: "KEEN_BILLING_CANCEL_URL", flag: "--billing-cancel-url", help: "where Stripe sends a buyer who gave up" },
  { key: "rateLimit", env: "KEEN_RATE_LIMIT", flag: "--rate-limit", help: "API requests per user per minute, across processes (default 600)" },
  { key: "ipv6LimitPrefix", env: "KEEN_IPV6_LIMIT_PREFIX", flag: "--ipv6-limit-prefix", help: "IPv6 prefix length (32-128) that counts as one client for login lockouts and rate limits (default 64)" },
  { key: "webhookAllowPrivate", env: "KEEN_WEBHOOK_ALLOW_PRIVATE", flag: "--webhook-allow-private", help: "let webhooks reach loopback/private/link-local addresses (default false)" },
  { key: "webhookTimeoutMs", env: "KEEN_WEBHOOK_TIMEOUT_MS", flag: "--webhook-timeout-ms", help: "deadline of one webhook delivery attempt (default 10000)" },
  { key: "webhookMaxAttempts", env: "KEEN_WEBHOOK_MAX_ATTEMPTS", flag: "--webhook-max-attempts", help: "delivery attempts per webhook event before it is marked failed (default 8)" },
  { key: "webhookRetryBaseMs", env: "KEEN_WEBHOOK_RETRY_BASE_MS", flag: "--webhook-retry-base-ms", help: "wait before the second attempt; x4 per attempt after, capped at 6 h (default 10000)" },
];

/** A setting that failed validation; `message` is one line naming the env variable or flag. */
export class ConfigError extends Error {
  readonly code = "invalid_config";
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/**
 * Builds the config from env variables and flags (flags win) through the one schema.
 * Throws `ConfigError` with a one-line reason on the first bad value.
 *
 * @example
 * const config = loadConfig({ env: process.env, flags: { port: "9000" } });
 */
export function loadConfig(sources: { env?: Record<string, string | undefined>; flags?: Partial<Record<keyof ServerConfigInput, unknown>> } = {}): ServerConfig {
  const env = sources.env ?? {};
  const input: Record<string, unknown> = {};
  for (const setting of SETTINGS) {
    const value = env[setting.env];
    if (value !== undefined && value !== "") input[setting.key] = value;
  }
  for (const [key, value] of Object.entries(sources.flags ?? {})) {
    if (value !== undefined) input[key] = value;
  }
  return parseConfig(input);
}

/**
 * Validates a config object (as `createServer` takes it).
 *
 * @example
 * const config = parseConfig({ port: 0, dataDir: "/tmp/keen" });
 */
export function parseConfig(input: ServerConfigInput | Record<string, unknown>): ServerConfig {
  const parsed = ServerConfig.safeParse(input);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  const key = String(issue.path[0] ?? "");
  const setting = SETTINGS.find((s) => s.key === key);
  const name = setting ? `${setting.flag} (${setting.env})` : key || "config";
  const reason = issue.code === "unrecognized_keys" ? `unknown setting ${issue.keys.join(", ")}` : issue.message;
  throw new ConfigError(`invalid ${name}: ${reason}`.replace(/\s+/g, " "));
}

/** The `--help` text listing every setting. */
export function settingsHelp(): string {
  const width = Math.max(...SETTINGS.map((s) => s.flag.length)) + 2;
  return SETTINGS.map((s) => `  ${s.flag.padEnd(width)}${s.help} [${s.env}]`).join("\n");
}
