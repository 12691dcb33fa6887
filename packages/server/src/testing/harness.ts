/** Test fixtures for the server's suites: databases, repositories, a running server, clients. */
import { randomBytes } from "node:crypto";
import { cp, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createTestRepo as createAgentTestRepo } from "@keen/agent-core/testing";
import pg from "pg";
import { afterAll, beforeAll, describe } from "vitest";
import { normaliseEmail, openDatabase, type Database } from "@keen/gateway-kit";
import { verifyAccountEmail } from "../admin-accounts.js";
import type { ServerConfigInput } from "../config.js";
import { readOutbox } from "../mail/outbox-mailer.js";
import { createServer, type KeenServer } from "../server.js";

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";

export interface DatabaseChoice {
  kind: "postgres" | "pglite";
  /** Config settings that point a server at this suite's database. */
  readonly settings: Partial<ServerConfigInput>;
}

async function admin(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

/**
 * Runs a suite against PostgreSQL (a fresh schema, and a fresh schema for pg-boss, both
 * dropped afterwards) and against PGlite under a fresh data dir.
 */
export function describeEachDatabase(name: string, suite: (choice: DatabaseChoice) => void): void {
  for (const kind of ["postgres", "pglite"] as const) {
    describe(`${name} [${kind}]`, () => {
      const schema = `t_${randomBytes(6).toString("hex")}`;
      const choice: DatabaseChoice = {
        kind,
        settings: kind === "postgres" ? { databaseUrl: TEST_DATABASE_URL, databaseSchema: schema } : {},
      };
      afterAll(async () => {
        if (kind === "postgres") {
          await admin(`drop schema if exists "${schema}" cascade`);
          await admin(`drop schema if exists "${schema}_jobs" cascade`);
        }
      });
      suite(choice);
    });
  }
}

/**
 * Copies the run's migrated embedded database (made once by test/setup, `KEEN_TEST_SERVER_DB`)
 * to `dbDir`, the folder PGlite opens (`<data dir>/db` for a server); false when there is none
 * (a file run outside the project's vitest config), and the caller starts from an empty one.
 */
export async function copyServerTemplate(dbDir: string): Promise<boolean> {
  const template = process.env.KEEN_TEST_SERVER_DB;
  if (!template) return false;
  await cp(template, dbDir, { recursive: true });
  return true;
}

/**
 * The database a suite's choice names, with the server's tables: a fresh schema on PostgreSQL
 * (migrated by the caller), or on PGlite a copy of the run's migrated template (test/setup), which
 * spares initdb and the migrations. Closing it removes the copy.
 */
export async function openTestDatabase(choice: DatabaseChoice): Promise<Database> {
  const { databaseUrl, databaseSchema } = choice.settings;
  if (databaseUrl) return openDatabase({ url: databaseUrl, schema: databaseSchema! });
  const dir = await mkdtemp(join(tmpdir(), "keen-test-db-"));
  if (!(await copyServerTemplate(dir))) {
    await rm(dir, { recursive: true, force: true });
    return openDatabase();
  }
  const database = await openDatabase({ dataDir: dir });
  const close = database.close.bind(database);
  return Object.assign(database, {
    async close() {
      await close();
      await rm(dir, { recursive: true, force: true });
    },
  });
}

export { TEST_GIT_IDENTITY } from "@keen/agent-core/testing";

/** A real git repository in a temporary folder with `files` committed on `main`. */
export function createTestRepo(files: Record<string, string> = { "README.md": "# app\n" }): Promise<string> {
  return createAgentTestRepo(files);
}

export const ADMIN_EMAIL = "admin@keen.test";

/** The servers this process started, by URL: `signup` verifies their listed admins. */
const servers = new Map<string, KeenServer>();

/** A server on a free port with a temporary data dir; closed and removed by `stop()`. */
export async function startTestServer(settings: Partial<ServerConfigInput> = {}): Promise<{ server: KeenServer; url: string; dataDir: string; stop(): Promise<void> }> {
  const dataDir = await mkdtemp(join(tmpdir(), "keen-server-data-"));
  // An embedded database starts as a copy of the run's migrated template (see test/setup),
  // which saves PGlite's initdb and the migrations; the server still checks them on start.
  if (!settings.databaseUrl && settings.dataDir === undefined) await copyServerTemplate(join(dataDir, "db"));
  const server = await createServer(
    { port: 0, dataDir, modelApiKey: "test", model: "claude-haiku-4-5", adminEmails: [ADMIN_EMAIL], logLevel: "silent", heartbeatMs: 200, ...settings },
    { passwordHashing: { memoryCost: 8, timeCost: 1 } },
  );
  const url = await server.listen();
  servers.set(url, server);
  return {
    server,
    url,
    dataDir,
    async stop() {
      servers.delete(url);
      await server.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** `beforeAll`/`afterAll` around a test server. */
export function useTestServer(settings: () => Partial<ServerConfigInput>): { readonly url: string; readonly server: KeenServer } {
  let started: Awaited<ReturnType<typeof startTestServer>> | undefined;
  // Start-up (PGlite's initdb, migrations) can take long on a shared, loaded machine.
  beforeAll(async () => {
    started = await startTestServer(settings());
  }, 180_000);
  afterAll(async () => {
    await started?.stop();
  }, 60_000);
  return {
    get url() {
      return started!.url;
    },
    get server() {
      return started!.server;
    },
  };
}

export interface Account {
  userId: string;
  /** The address it signed up with, normalised (set by `signup`). */
  email?: string;
  teamId: string;
  accessToken: string;
  headers: Record<string, string>;
}

/**
 * Signs a new user up and returns their token and team. An address the server lists as an admin
 * is then verified, as its operator would with `keen admin verify-email`, so the account is an
 * admin: directly for a server of this process, and for a server in its own process
 * (serve-process.ts, which verifies listed admins itself) by waiting until `GET /v1/me` says so.
 * A test of what an unverified listed address gets signs up through the API itself. With
 * `verifyEmail`, the account then proves its address through the real flow (`verifyEmail`).
 */
export async function signup(url: string, email = `u${randomBytes(5).toString("hex")}@keen.test`, options: { verifyEmail?: boolean } = {}): Promise<Account> {
  const res = await fetch(`${url}/v1/auth/signup`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email, password: "correct horse battery staple" }),
  });
  if (res.status !== 201) throw new Error(`signup failed: ${res.status} ${await res.text()}`);
  const body = (await res.json()) as { user: { id: string }; accessToken: string; teamId: string };
  const account = { userId: body.user.id, email: normaliseEmail(email), teamId: body.teamId, accessToken: body.accessToken, headers: { authorization: `Bearer ${body.accessToken}` } };
  const server = servers.get(url);
  if (server) {
    if (server.config.adminEmails.map(normaliseEmail).includes(normaliseEmail(email))) await verifyAccountEmail(server.database.db, server.config, email);
  } else if (normaliseEmail(email) === ADMIN_EMAIL) {
    await eventually(async () => (await api(url, "/v1/me", { headers: account.headers })).body?.admin === true, 20_000, `${email} to be verified`);
  }
  if (options.verifyEmail) await verifyEmail(url, account);
  return account;
}

/** The newest verification token the outbox of a server of this process holds for `email`. */
export async function outboxToken(url: string, email: string): Promise<string> {
  const server = servers.get(url);
  if (!server) throw new Error(`no server of this process at ${url}`);
  const message = (await readOutbox(server.config.mailOutboxDir)).filter((m) => m.to === normaliseEmail(email)).at(-1);
  const token = message && /evt_[A-Za-z0-9_-]{43}/.exec(message.text)?.[0];
  if (!token) throw new Error(`no verification email for ${email} in ${server.config.mailOutboxDir}`);
  return token;
}

/**
 * Proves the account's address the way its holder would: asks for a verification email, reads
 * the token from the server's outbox and confirms it.
 */
export async function verifyEmail(url: string, account: Account): Promise<void> {
  if (!account.email) throw new Error("verifyEmail needs an account from signup()");
  const asked = await api(url, "/v1/auth/email/verification", { headers: account.headers, body: {} });
  if (asked.status !== 202) throw new Error(`verification request failed: ${asked.status} ${JSON.stringify(asked.body)}`);
  const confirmed = await api(url, "/v1/auth/email/verification/confirm", { headers: account.headers, body: { token: await outboxToken(url, account.email) } });
  if (confirmed.status !== 200) throw new Error(`verification failed: ${confirmed.status} ${JSON.stringify(confirmed.body)}`);
}

export async function api<T = any>(url: string, path: string, init: { method?: string; headers?: Record<string, string>; body?: unknown } = {}): Promise<{ status: number; body: T; headers: Headers }> {
  const res = await fetch(`${url}${path}`, {
    method: init.method ?? (init.body === undefined ? "GET" : "POST"),
    headers: { ...(init.body !== undefined ? { "content-type": "application/json" } : {}), ...init.headers },
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
  });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON (a diff, metrics).
  }
  return { status: res.status, body: body as T, headers: res.headers };
}

export interface SseFrame {
  id?: string;
  event: string;
  data: string;
}

/**
 * Reads an SSE response until `stop(frame)` says so or the stream ends; returns the frames
 * (comments and `retry:` lines skipped).
 */
export async function readSse(url: string, headers: Record<string, string>, stop: (frame: SseFrame, all: SseFrame[]) => boolean = () => false): Promise<{ status: number; frames: SseFrame[] }> {
  const controller = new AbortController();
  const res = await fetch(url, { headers: { accept: "text/event-stream", ...headers }, signal: controller.signal });
  const frames: SseFrame[] = [];
  if (res.status !== 200 || !res.body) return { status: res.status, frames };
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end: number;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const raw = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const frame: SseFrame = { event: "message", data: "" };
        let hasData = false;
        for (const line of raw.split("\n")) {
          if (line.startsWith(":") || line.startsWith("retry:")) continue;
          const colon = line.indexOf(":");
          const field = line.slice(0, colon);
          const value = line.slice(colon + 1).replace(/^ /, "");
          if (field === "id") frame.id = value;
          else if (field === "event") frame.event = value;
          else if (field === "data") {
            frame.data += (hasData ? "\n" : "") + value;
            hasData = true;
          }
        }
        if (!hasData) continue;
        frames.push(frame);
        if (stop(frame, frames)) return { status: res.status, frames };
      }
    }
  } finally {
    controller.abort();
  }
  return { status: res.status, frames };
}

/** Polls until `check` returns a value, or fails after `timeoutMs`. */
export async function eventually<T>(check: () => Promise<T | undefined | false>, timeoutMs = 20_000, what = "condition"): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await check();
    if (value) return value;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}
