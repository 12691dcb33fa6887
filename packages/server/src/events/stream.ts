import type { IncomingMessage, Server } from "node:http";
import { GatewayError, looksLikeApiKey, type AuthService, type Principal } from "@keen/gateway-kit";
import type { Context } from "koa";
import { WebSocketServer, type WebSocket } from "ws";
import type { ServerConfig } from "../config.js";
import { ServerError } from "../errors.js";
import type { RunService } from "../runs/run-service.js";
import type { EventBus, StoredEvent } from "./event-bus.js";
import { followRun } from "./follow.js";
import type { RunEventLog } from "./event-log.js";
import type { ReleaseSlot, StreamSlots } from "./stream-slots.js";

/** One open SSE or WebSocket stream: whose credentials opened it, and how to end it. */
export interface OpenStream {
  userId: string;
  /** Ends the stream as on shutdown. */
  controller: AbortController;
  /** Ends the stream because its credentials no longer hold (an `error` event, or close 1008). */
  revoke(): void;
}

export interface StreamDeps {
  config: ServerConfig;
  log: RunEventLog;
  bus: EventBus;
  runs: RunService;
  /** The open streams of this server: ended together on shutdown, a user's at once on erasure. */
  streams: Set<OpenStream>;
  /** Caps on open streams per user and in all (SSE and WebSocket counted together). */
  slots: StreamSlots;
  onOpen(): () => void;
  /**
   * With these, an open stream checks its request's credentials again every `sseHeartbeatMs`
   * and ends once they no longer give access to the run (a revoked key, a signed-out session,
   * an expired token, a member removed from the team, a lost scope).
   */
  auth?: AuthService;
  scopes?: { read: string };
  /**
   * Counts a WebSocket upgrade against the caller's API rate limit (the HTTP routes count in the
   * router); a refusal is answered 429 with `Retry-After`.
   */
  admit?: (principal: Principal) => Promise<{ allowed: boolean; retryAfterSeconds: number }>;
}

/**
 * Whether the credentials a stream was opened with still give access to its run. Only a verdict
 * about the credentials or the run closes the stream; a passing failure (the database restarting)
 * does not, and the next check decides.
 */
async function stillAuthorized(deps: StreamDeps, req: IncomingMessage, runId: string): Promise<boolean> {
  if (!deps.auth) return true;
  try {
    const principal = await principalOf(deps.auth, req);
    if (deps.scopes && !principal.scopes.includes(deps.scopes.read)) return false;
    await deps.runs.load(principal, runId);
    return true;
  } catch (error) {
    if (error instanceof GatewayError) return false;
    if (error instanceof ServerError) return !["not_found", "forbidden", "invalid_request", "unauthenticated"].includes(error.code);
    return (error as { status?: number }).status !== 401;
  }
}

/** Runs `check` every `intervalMs` (never two at once) and calls `revoke` the first time it says no. */
function watchCredentials(intervalMs: number, check: () => Promise<boolean>, revoke: () => void): () => void {
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    void check()
      .then((ok) => {
        if (!ok) {
          clearInterval(timer);
          revoke();
        }
      })
      .finally(() => {
        busy = false;
      });
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

const serialised = new WeakMap<StoredEvent, string>();

/**
 * The JSON a client receives for one event: the agent-core event, numbered by the server.
 * Live events are one object shared by every follower in the process, so it is built once.
 */
export function eventJson(event: StoredEvent): string {
  let text = serialised.get(event);
  if (text === undefined) {
    text = JSON.stringify({ ...event.payload, runId: event.runId, seq: event.seq, type: event.type, agentId: event.agentId, at: event.at });
    serialised.set(event, text);
  }
  return text;
}

/** A cursor from `Last-Event-ID` (a reconnecting EventSource) or `?after=`; the header wins. */
export function cursorOf(header: string | undefined, query: unknown): number {
  const raw = header !== undefined && header !== "" ? header : query;
  if (raw === undefined || raw === null || raw === "") return 0;
  if (typeof raw !== "string" || !/^\d{1,15}$/.test(raw)) throw new ServerError("invalid_request", "The event cursor must be a non-negative integer");
  return Number(raw);
}

/**
 * `GET /v1/runs/:id/events`: Server-Sent Events with `id: <seq>`, replay then live, a comment
 * line as heartbeat, and an `end` event once a finished run's last event was sent. The run is
 * loaded within the caller's tenant before anything is written (404 otherwise).
 */
export async function serveEventStream(ctx: Context, deps: StreamDeps, principal: Principal, runId: string): Promise<void> {
  const run = await deps.runs.load(principal, runId);
  const after = cursorOf(ctx.get("last-event-id") || undefined, ctx.query.after);
  // Taken before anything is written (a refusal is a plain 429) and given back the moment the
  // connection closes, however it closes, not when the follower gets round to noticing.
  const release = deps.slots.acquire(principal.userId);
  const res = ctx.res;
  ctx.respond = false;
  // A client that hung up while the run was loading has no close event left to send.
  if (res.destroyed) return release();
  res.once("close", release);
  res.writeHead(200, {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-store",
    Connection: "keep-alive",
    "X-Accel-Buffering": "no",
    "X-Request-Id": ctx.state.requestId ?? "",
  });
  res.flushHeaders();
  const controller = new AbortController();
  const closed = () => controller.abort();
  ctx.req.on("close", closed);
  res.on("close", closed);
  const done = deps.onOpen();
  const revoke = () => {
    if (controller.signal.aborted) return;
    res.write(`event: error\ndata: ${JSON.stringify({ error: { code: "unauthenticated", message: "The credentials of this stream no longer give access to the run" } })}\n\n`);
    controller.abort();
  };
  const unregister = registerStream(deps.streams, { userId: principal.userId, controller, revoke });
  const heartbeat = setInterval(() => {
    if (res.writableNeedDrain) return;
    res.write(": keep-alive\n\n");
  }, deps.config.sseHeartbeatMs);
  heartbeat.unref();
  const unwatch = watchCredentials(deps.config.sseHeartbeatMs, () => stillAuthorized(deps, ctx.req, run.id), revoke);
  try {
    res.write("retry: 1000\n\n");
    for await (const event of followRun(deps.log, deps.bus, run.id, { after, buffer: deps.config.streamBuffer, signal: controller.signal })) {
      const ok = res.write(`id: ${event.seq}\nevent: ${event.type}\ndata: ${eventJson(event)}\n\n`);
      if (!ok) await waitForDrain(res, controller.signal);
    }
    if (!controller.signal.aborted) {
      const status = (await deps.log.status(run.id)) ?? "unknown";
      res.write(`event: end\ndata: ${JSON.stringify({ status })}\n\n`);
    }
  } finally {
    clearInterval(heartbeat);
    unwatch();
    unregister();
    done();
    release();
    res.end();
  }
}

function waitForDrain(res: NodeJS.WritableStream, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const finish = () => {
      res.off("drain", finish);
      signal.removeEventListener("abort", finish);
      resolve();
    };
    res.on("drain", finish);
    signal.addEventListener("abort", finish, { once: true });
  });
}

function registerStream(streams: Set<OpenStream>, stream: OpenStream): () => void {
  streams.add(stream);
  return () => streams.delete(stream);
}

const STREAM_PATH = /^\/v1\/runs\/([^/]+)\/stream$/;

async function principalOf(auth: AuthService, req: IncomingMessage): Promise<Principal> {
  const header = req.headers.authorization;
  let credential: string | undefined;
  if (header) {
    const match = /^Bearer[ ]+([^\s]+)\s*$/i.exec(header);
    if (!match) throw new ServerError("invalid_request", "Authorization header must be `Bearer <token>`");
    credential = match[1];
  } else if (typeof req.headers["x-api-key"] === "string") {
    credential = req.headers["x-api-key"].trim();
  }
  if (!credential) throw Object.assign(new Error("Authentication required"), { status: 401 });
  return looksLikeApiKey(credential) || credential.startsWith("keen_") ? auth.verifyApiKey(credential) : auth.verifyAccessToken(credential);
}

function refuse(socket: import("node:stream").Duplex, status: number, code: string, message: string, headers: Record<string, string> = {}): void {
  const body = JSON.stringify({ error: { code, message } });
  const reason = status === 401 ? "Unauthorized" : status === 404 ? "Not Found" : status === 403 ? "Forbidden" : status === 429 ? "Too Many Requests" : "Bad Request";
  const extra = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join("");
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}Connection: close\r\n\r\n${body}`);
}

/**
 * `GET /v1/runs/:id/stream` as a WebSocket: authenticated on the upgrade request (Bearer token
 * or `X-API-Key`), `?after=<seq>` as the cursor; each message is one event's JSON, then a
 * `{"type":"stream.end"}` message and a normal close once a finished run was sent in full.
 */
export function attachWebSocketStreams(server: Server, deps: StreamDeps & { auth: AuthService; scopes: { read: string } }): WebSocketServer {
  const wss = new WebSocketServer({ noServer: true, maxPayload: 4096 });
  server.on("upgrade", (req, socket, head) => {
    const url = new URL(req.url ?? "/", "http://localhost");
    const match = STREAM_PATH.exec(url.pathname);
    if (!match) return refuse(socket, 404, "not_found", "Not found");
    void (async () => {
      let principal: Principal;
      try {
        principal = await principalOf(deps.auth, req);
      } catch {
        return refuse(socket, 401, "unauthenticated", "Authentication required");
      }
      if (deps.admit) {
        const admitted = await deps.admit(principal);
        if (!admitted.allowed) {
          return refuse(socket, 429, "rate_limited", "Too many requests; slow down", { "Retry-After": String(admitted.retryAfterSeconds) });
        }
      }
      if (!principal.scopes.includes(deps.scopes.read)) return refuse(socket, 403, "insufficient_scope", `Missing scope ${deps.scopes.read}`);
      let runId: string;
      let after: number;
      try {
        runId = (await deps.runs.load(principal, decodeURIComponent(match[1]!))).id;
        after = cursorOf(undefined, url.searchParams.get("after") ?? undefined);
      } catch (error) {
        if (error instanceof ServerError && error.code === "not_found") return refuse(socket, 404, "not_found", "Run not found");
        return refuse(socket, 400, "invalid_request", error instanceof Error ? error.message : "Bad request");
      }
      // Refused before the upgrade completes: the client sees HTTP 429, never an open socket.
      let release: ReleaseSlot;
      try {
        release = deps.slots.acquire(principal.userId);
      } catch (error) {
        if (error instanceof ServerError) return refuse(socket, 429, error.code, error.message);
        throw error;
      }
      // The socket's close frees the slot, also when the handshake never finishes.
      socket.once("close", release);
      if (socket.destroyed) return release();
      wss.handleUpgrade(req, socket, head, (ws) => void pipeToSocket(ws, deps, principal.userId, runId, after, () => stillAuthorized(deps, req, runId)).finally(release));
    })().catch(() => refuse(socket, 400, "bad_request", "Bad request"));
  });
  return wss;
}

async function pipeToSocket(ws: WebSocket, deps: StreamDeps, userId: string, runId: string, after: number, authorized: () => Promise<boolean>): Promise<void> {
  const controller = new AbortController();
  ws.on("close", () => controller.abort());
  ws.on("error", () => controller.abort());
  const done = deps.onOpen();
  // 1008: policy violation, the closest standard code for "no longer allowed".
  const revoke = () => ws.close(1008, "credentials no longer valid");
  const unregister = registerStream(deps.streams, { userId, controller, revoke });
  const heartbeat = setInterval(() => ws.ping(), deps.config.sseHeartbeatMs);
  heartbeat.unref();
  const unwatch = watchCredentials(deps.config.sseHeartbeatMs, authorized, revoke);
  try {
    for await (const event of followRun(deps.log, deps.bus, runId, { after, buffer: deps.config.streamBuffer, signal: controller.signal })) {
      await new Promise<void>((resolve, reject) => ws.send(eventJson(event), (error) => (error ? reject(error) : resolve())));
    }
    if (!controller.signal.aborted) {
      const status = (await deps.log.status(runId)) ?? "unknown";
      ws.send(JSON.stringify({ type: "stream.end", status }));
      ws.close(1000, "run finished");
    } else {
      ws.close(1001, "going away");
    }
  } catch {
    ws.terminate();
  } finally {
    clearInterval(heartbeat);
    unwatch();
    unregister();
    done();
  }
}
